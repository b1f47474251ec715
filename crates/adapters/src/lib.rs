//! Ready-made adapters for [`snakepit_core`] pools.
//!
//! - [`GenericPython`], [`GenericJavaScript`], [`GenericRuby`]: the bundled
//!   bridges with the generic commands (`ping`, `echo`, `compute`, `info`,
//!   and in Node `random`). The bridge files are embedded in this crate and
//!   written once to a cache directory, so they work from any project.
//! - [`Bridge`]: a script or module of your own in Python, Node.js or Ruby,
//!   with the bundled bridge importable (`import snakepit_bridge`,
//!   `require('snakepit-bridge')`, `require 'snakepit_bridge'`) and
//!   interpreter discovery.
//! - [`Custom`]: any other executable that speaks the protocol.
//!
//! ```no_run
//! use serde_json::json;
//! use snakepit_adapters::GenericPython;
//! use snakepit_core::Pool;
//!
//! # async fn demo() -> Result<(), snakepit_core::Error> {
//! let pool = Pool::builder(GenericPython).size(2).start().await?;
//! let r = pool.execute("compute", json!({"operation": "multiply", "a": 10, "b": 5})).await?;
//! assert_eq!(r["result"], 50);
//! pool.shutdown().await
//! # }
//! ```
//!
//! Interpreters are found in this order: the path given to
//! [`Bridge::interpreter`]; the variable `SNAKEPIT_PYTHON`, `SNAKEPIT_NODE`
//! or `SNAKEPIT_RUBY`; for Python, the active virtualenv (`VIRTUAL_ENV`);
//! then `python3`, `node` or `ruby` on `PATH`. A missing interpreter or
//! script fails the pool's start with an error naming it and carrying the
//! worker's stderr. [`Language::inspect`] reports what a machine has: the
//! interpreter, its version and real binary, and the bridge packages.

mod embedded;
mod inspect;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use snakepit_core::{Adapter, Launch, WireCodec};

pub use inspect::{BridgePackage, Inspection};

/// A language with a bundled bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Language {
    /// Python 3.8+.
    Python,
    /// Node.js 16+.
    Node,
    /// Ruby 3.0+.
    Ruby,
}

impl Language {
    fn env_var(self) -> &'static str {
        match self {
            Language::Python => "SNAKEPIT_PYTHON",
            Language::Node => "SNAKEPIT_NODE",
            Language::Ruby => "SNAKEPIT_RUBY",
        }
    }

    fn default_program(self) -> &'static str {
        match self {
            Language::Python => "python3",
            Language::Node => "node",
            Language::Ruby => "ruby",
        }
    }

    fn path_var(self) -> &'static str {
        match self {
            Language::Python => "PYTHONPATH",
            Language::Node => "NODE_PATH",
            Language::Ruby => "RUBYLIB",
        }
    }

    /// The interpreter to run: explicit, environment, virtualenv, `PATH`.
    pub fn find_interpreter(self, explicit: Option<&PathBuf>) -> PathBuf {
        if let Some(p) = explicit {
            return p.clone();
        }
        if let Some(p) = std::env::var_os(self.env_var()).filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        if self == Language::Python {
            if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
                let candidate = PathBuf::from(venv).join("bin/python");
                if candidate.exists() {
                    return candidate;
                }
            }
        }
        PathBuf::from(self.default_program())
    }
}

#[derive(Debug, Clone)]
enum Entry {
    Generic,
    Script(PathBuf),
    Module(String),
}

/// A worker in Python, Node.js or Ruby on top of the bundled bridge.
///
/// ```
/// use snakepit_adapters::Bridge;
/// let adapter = Bridge::python("workers/model.py")
///     .arg("--model=small")
///     .env("OMP_NUM_THREADS", "1")
///     .command_timeout(std::time::Duration::from_secs(120));
/// ```
#[derive(Debug, Clone)]
pub struct Bridge {
    language: Language,
    entry: Entry,
    interpreter: Option<PathBuf>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    codec: WireCodec,
    timeout: Duration,
    commands: Option<Vec<String>>,
}

impl Bridge {
    fn new(language: Language, entry: Entry) -> Self {
        Bridge {
            language,
            entry,
            interpreter: None,
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            codec: WireCodec::default(),
            timeout: Duration::from_secs(30),
            commands: None,
        }
    }

    /// The bundled generic worker of `language`.
    pub fn generic(language: Language) -> Self {
        Bridge::new(language, Entry::Generic)
    }

    /// A Python script of yours.
    pub fn python(script: impl Into<PathBuf>) -> Self {
        Bridge::new(Language::Python, Entry::Script(script.into()))
    }

    /// A Python module of yours, run as `python -m MODULE`.
    pub fn python_module(module: impl Into<String>) -> Self {
        Bridge::new(Language::Python, Entry::Module(module.into()))
    }

    /// A Node.js script of yours.
    pub fn node(script: impl Into<PathBuf>) -> Self {
        Bridge::new(Language::Node, Entry::Script(script.into()))
    }

    /// A Ruby script of yours.
    pub fn ruby(script: impl Into<PathBuf>) -> Self {
        Bridge::new(Language::Ruby, Entry::Script(script.into()))
    }

    /// Runs this interpreter instead of discovering one.
    pub fn interpreter(mut self, path: impl Into<PathBuf>) -> Self {
        self.interpreter = Some(path.into());
        self
    }

    /// Adds an argument after the script.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Runs the workers in this directory.
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Picks the wire codec (MessagePack needs the language's package:
    /// `msgpack` on PyPI, `@msgpack/msgpack` on npm, the `msgpack` gem).
    pub fn codec(mut self, codec: WireCodec) -> Self {
        self.codec = codec;
        self
    }

    /// The deadline of calls that do not set their own.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Lets only these commands through to the workers.
    pub fn supported_commands(
        mut self,
        commands: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.commands = Some(commands.into_iter().map(Into::into).collect());
        self
    }
}

/// Prepends `dir` to a path-list variable, keeping what the user set.
fn prepend_path(var: &str, dir: PathBuf, extra: &[(OsString, OsString)]) -> OsString {
    let existing = extra
        .iter()
        .rev()
        .find(|(k, _)| k == var)
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var_os(var));
    let mut parts = vec![dir];
    if let Some(existing) = existing {
        parts.extend(std::env::split_paths(&existing));
    }
    std::env::join_paths(parts).unwrap_or_default()
}

impl Adapter for Bridge {
    fn launch(&self) -> Launch {
        let lang = self.language;
        let mut launch = Launch::new(lang.find_interpreter(self.interpreter.as_ref()));
        if lang == Language::Python {
            // Unbuffered, and no .pyc files written next to user scripts.
            launch = launch.arg("-u");
        }
        match &self.entry {
            Entry::Generic => match embedded::generic_worker(lang) {
                // No `--snakepit-run-id`: `ps` shows command lines to every
                // user; the run id stays in the environment.
                Ok(script) => launch = launch.arg(script),
                Err(e) => tracing::error!(error = %e, "cannot write the bundled bridge files"),
            },
            Entry::Script(script) => launch = launch.arg(script),
            Entry::Module(module) => launch = launch.arg("-m").arg(module),
        }
        launch = launch.arg("--mode").arg("pool-worker");
        for a in &self.args {
            launch = launch.arg(a);
        }
        if let Ok(dir) = embedded::module_dir(lang) {
            launch = launch.env(
                lang.path_var(),
                prepend_path(lang.path_var(), dir, &self.env),
            );
        }
        for (k, v) in &self.env {
            if k != lang.path_var() {
                launch = launch.env(k, v);
            }
        }
        if let Some(dir) = &self.cwd {
            launch = launch.cwd(dir);
        }
        launch
    }

    fn codec(&self) -> WireCodec {
        self.codec
    }

    fn supported_commands(&self) -> Option<Vec<String>> {
        self.commands.clone()
    }

    fn command_timeout(&self, _: &str) -> Duration {
        self.timeout
    }
}

macro_rules! generic_adapter {
    ($(#[$doc:meta])* $name:ident, $lang:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default)]
        pub struct $name;

        impl Adapter for $name {
            fn launch(&self) -> Launch {
                Bridge::generic($lang).launch()
            }
        }
    };
}

generic_adapter!(
    /// The bundled Python bridge with the generic commands (JSON codec).
    GenericPython,
    Language::Python
);
generic_adapter!(
    /// The bundled Node.js bridge with the generic commands, `random` too (JSON codec).
    GenericJavaScript,
    Language::Node
);
generic_adapter!(
    /// The bundled Ruby bridge with the generic commands (JSON codec).
    GenericRuby,
    Language::Ruby
);

/// Any executable that speaks the protocol, like the original Snakepit's
/// custom adapters: a program, its arguments, and the optional hooks.
///
/// ```
/// use snakepit_adapters::Custom;
/// let adapter = Custom::new("ruby")
///     .arg("priv/ruby/bridge.rb")
///     .args(["--mode", "pool-worker"])
///     .supported_commands(["ping", "process_data", "generate_report"])
///     .validate(|command, args| match command {
///         "process_data" if args.get("data").is_none() => Err("Missing required field: data".into()),
///         _ => Ok(()),
///     })
///     .timeout_for("generate_report", std::time::Duration::from_secs(120));
/// ```
#[allow(clippy::type_complexity)]
pub struct Custom {
    launch: Launch,
    codec: WireCodec,
    commands: Option<Vec<String>>,
    validate: Option<Box<dyn Fn(&str, &Value) -> Result<(), String> + Send + Sync>>,
    prepare: Option<Box<dyn Fn(&str, Value) -> Value + Send + Sync>>,
    process: Option<Box<dyn Fn(&str, Value) -> Result<Value, String> + Send + Sync>>,
    timeouts: Vec<(String, Duration)>,
    default_timeout: Duration,
}

impl Custom {
    /// Runs `program`.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Custom {
            launch: Launch::new(program),
            codec: WireCodec::default(),
            commands: None,
            validate: None,
            prepare: None,
            process: None,
            timeouts: Vec::new(),
            default_timeout: Duration::from_secs(30),
        }
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.launch = self.launch.arg(arg);
        self
    }

    /// Adds arguments.
    pub fn args(mut self, args: impl IntoIterator<Item = impl Into<OsString>>) -> Self {
        for a in args {
            self.launch = self.launch.arg(a);
        }
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.launch = self.launch.env(key, value);
        self
    }

    /// Runs the workers in this directory.
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.launch = self.launch.cwd(dir);
        self
    }

    /// Picks the wire codec.
    pub fn codec(mut self, codec: WireCodec) -> Self {
        self.codec = codec;
        self
    }

    /// Lets only these commands through.
    pub fn supported_commands(
        mut self,
        commands: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.commands = Some(commands.into_iter().map(Into::into).collect());
        self
    }

    /// Checks each call before it is queued.
    pub fn validate(
        mut self,
        f: impl Fn(&str, &Value) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.validate = Some(Box::new(f));
        self
    }

    /// Reshapes each call's arguments.
    pub fn prepare_args(
        mut self,
        f: impl Fn(&str, Value) -> Value + Send + Sync + 'static,
    ) -> Self {
        self.prepare = Some(Box::new(f));
        self
    }

    /// Reshapes each successful result.
    pub fn process_response(
        mut self,
        f: impl Fn(&str, Value) -> Result<Value, String> + Send + Sync + 'static,
    ) -> Self {
        self.process = Some(Box::new(f));
        self
    }

    /// The deadline of `command` when a call does not set its own.
    pub fn timeout_for(mut self, command: impl Into<String>, timeout: Duration) -> Self {
        self.timeouts.push((command.into(), timeout));
        self
    }

    /// The deadline of every other command.
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.default_timeout = timeout;
        self
    }
}

impl Adapter for Custom {
    fn launch(&self) -> Launch {
        self.launch.clone()
    }
    fn codec(&self) -> WireCodec {
        self.codec
    }
    fn supported_commands(&self) -> Option<Vec<String>> {
        self.commands.clone()
    }
    fn validate_command(&self, command: &str, args: &Value) -> Result<(), String> {
        self.validate.as_ref().map_or(Ok(()), |f| f(command, args))
    }
    fn prepare_args(&self, command: &str, args: Value) -> Value {
        match &self.prepare {
            Some(f) => f(command, args),
            None => args,
        }
    }
    fn process_response(&self, command: &str, result: Value) -> Result<Value, String> {
        match &self.process {
            Some(f) => f(command, result),
            None => Ok(result),
        }
    }
    fn command_timeout(&self, command: &str) -> Duration {
        self.timeouts
            .iter()
            .find(|(c, _)| c == command)
            .map_or(self.default_timeout, |(_, t)| *t)
    }
}
