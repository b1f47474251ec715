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
            .find(|(c, _)| c == command)
            .map_or(self.default_timeout, |(_, t)| *t)
    }
}
