//! What [`Bridge`](crate::Bridge) and [`Custom`](crate::Custom) share beyond
//! how to start a worker: the codec, the commands let through, and the
//! deadlines of calls that set none.

use std::time::Duration;

use snakepit_core::WireCodec;

/// The deadline of a command when neither the call nor a per-command
/// setting gives one.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub(crate) codec: WireCodec,
    /// `None` lets every command through.
    pub(crate) commands: Option<Vec<String>>,
    /// Per command, the first match wins.
    pub(crate) timeouts: Vec<(String, Duration)>,
    pub(crate) default_timeout: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            codec: WireCodec::default(),
            commands: None,
            timeouts: Vec::new(),
            default_timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl Policy {
    pub(crate) fn only(&mut self, commands: impl IntoIterator<Item = impl Into<String>>) {
        self.commands = Some(commands.into_iter().map(Into::into).collect());
    }

    pub(crate) fn command_timeout(&self, command: &str) -> Duration {
        self.timeouts
            .iter()
            .rev()
            .find(|(c, _)| c == command)
            .map_or(self.default_timeout, |(_, t)| *t)
    }
}

/// The builder methods [`Bridge`](crate::Bridge) and [`Custom`](crate::Custom)
/// share, written once: `$launch` names the type's [`Launch`] field (the
/// worker's arguments, environment and directory), and `policy` is its
/// [`Policy`]. Used inside each type's `impl` block.
///
/// [`Launch`]: snakepit_core::Launch
macro_rules! shared_builder_methods {
    ($launch:ident) => {
        /// Adds an argument (for a [`Bridge`](crate::Bridge), after its script).
        pub fn arg(mut self, arg: impl Into<std::ffi::OsString>) -> Self {
            self.$launch = self.$launch.arg(arg);
            self
        }

        /// Adds arguments (for a [`Bridge`](crate::Bridge), after its script).
        pub fn args(self, args: impl IntoIterator<Item = impl Into<std::ffi::OsString>>) -> Self {
            args.into_iter().fold(self, Self::arg)
        }

        /// Adds an environment variable. For a [`Bridge`](crate::Bridge),
        /// setting the language's module path (`PYTHONPATH`, `NODE_PATH`,
        /// `RUBYLIB`) adds to it, after the bridge's own directory.
        pub fn env(
            mut self,
            key: impl Into<std::ffi::OsString>,
            value: impl Into<std::ffi::OsString>,
        ) -> Self {
            self.$launch = self.$launch.env(key, value);
            self
        }

        /// Runs the workers in this directory.
        pub fn cwd(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
            self.$launch = self.$launch.cwd(dir);
            self
        }

        /// Picks the wire codec (default JSON). MessagePack needs the
        /// worker's package: `msgpack` on PyPI, `@msgpack/msgpack` on npm,
        /// the `msgpack` gem.
        pub fn codec(mut self, codec: snakepit_core::WireCodec) -> Self {
            self.policy.codec = codec;
            self
        }

        /// Lets only these commands through to the workers.
        pub fn supported_commands(
            mut self,
            commands: impl IntoIterator<Item = impl Into<String>>,
        ) -> Self {
            self.policy.only(commands);
            self
        }

        /// The deadline of `command` when a call does not set its own; set
        /// twice for one command, the last one counts.
        pub fn timeout_for(
            mut self,
            command: impl Into<String>,
            timeout: std::time::Duration,
        ) -> Self {
            self.policy.timeouts.push((command.into(), timeout));
            self
        }
    };
}

/// The [`Adapter`](snakepit_core::Adapter) methods that read the
/// [`Policy`] in the type's `policy` field. Used inside `impl Adapter`.
macro_rules! policy_adapter_methods {
    () => {
        fn codec(&self) -> snakepit_core::WireCodec {
            self.policy.codec
        }

        fn supported_commands(&self) -> Option<Vec<String>> {
            self.policy.commands.clone()
        }

        fn command_timeout(&self, command: &str) -> std::time::Duration {
            self.policy.command_timeout(command)
        }
    };
}

pub(crate) use {policy_adapter_methods, shared_builder_methods};
