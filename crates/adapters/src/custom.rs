//! [`Custom`]: any executable that speaks the protocol, with the original
//! Snakepit's adapter hooks as closures.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use snakepit_core::{Adapter, Launch};

use crate::policy::{policy_adapter_methods, shared_builder_methods, Policy};

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
pub struct Custom {
    launch: Launch,
    policy: Policy,
    validate: Option<Validate>,
    prepare: Option<Prepare>,
    process: Option<Process>,
}

type Validate = Box<dyn Fn(&str, &Value) -> Result<(), String> + Send + Sync>;
type Prepare = Box<dyn Fn(&str, Value) -> Value + Send + Sync>;
type Process = Box<dyn Fn(&str, Value) -> Result<Value, String> + Send + Sync>;

impl Custom {
    /// Runs `program`.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Custom {
            launch: Launch::new(program),
            policy: Policy::default(),
            validate: None,
            prepare: None,
            process: None,
        }
    }

    shared_builder_methods!(launch);

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

    /// The deadline of every other command (default 30 s).
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.policy.default_timeout = timeout;
        self
    }
}

impl Adapter for Custom {
    fn launch(&self) -> Launch {
        self.launch.clone()
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

    policy_adapter_methods!();
}
