//! The argument types that both the command line and `snakepit.toml` name:
//! the language (`--adapter`, `adapter =`), the codec (`--codec`,
//! `codec =`), and the worker flags `exec` and `bench` share. Kept apart
//! from the settings file ([`crate::config`]) and from choosing the worker
//! ([`crate::workers`]), which both read them.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use serde::Deserialize;
use snakepit_adapters::Language;
use snakepit_core::WireCodec;

/// A language with a bundled bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Lang {
    /// Python 3 (`python3`, or $SNAKEPIT_PYTHON, or the active virtualenv).
    Python,
    /// Node.js (`node`, or $SNAKEPIT_NODE).
    #[value(alias = "javascript", alias = "js")]
    #[serde(alias = "javascript", alias = "js")]
    Node,
    /// Ruby (`ruby`, or $SNAKEPIT_RUBY).
    Ruby,
}

impl Lang {
    pub(crate) fn language(self) -> Language {
        match self {
            Lang::Python => Language::Python,
            Lang::Node => Language::Node,
            Lang::Ruby => Language::Ruby,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        self.language().name()
    }

    /// The language of a script, from its extension.
    pub(crate) fn of_script(script: &Path) -> Option<Lang> {
        match script.extension()?.to_str()? {
            "py" => Some(Lang::Python),
            "js" | "cjs" | "mjs" => Some(Lang::Node),
            "rb" => Some(Lang::Ruby),
            _ => None,
        }
    }
}

/// A wire codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum CodecArg {
    /// JSON: needs nothing.
    Json,
    /// MessagePack: needs the language's msgpack package.
    #[value(alias = "messagepack")]
    #[serde(alias = "messagepack")]
    Msgpack,
}

impl CodecArg {
    pub(crate) fn wire(self) -> WireCodec {
        match self {
            CodecArg::Json => WireCodec::Json,
            CodecArg::Msgpack => WireCodec::MsgPack,
        }
    }
}

/// The worker flags shared by `exec` and `bench`.
#[derive(Debug, Clone, Args)]
pub(crate) struct WorkerArgs {
    /// The bundled bridge to run [default: python, or the script's language].
    #[arg(long, value_enum)]
    pub(crate) adapter: Option<Lang>,
    /// Your worker script (.py, .js, .rb) on the bundled bridge, instead of the generic worker.
    #[arg(long, value_name = "FILE")]
    pub(crate) script: Option<PathBuf>,
    /// The wire codec [default: json].
    #[arg(long, value_enum)]
    pub(crate) codec: Option<CodecArg>,
    /// Load the script once in a template process and fork the workers from
    /// it (Python and Ruby; see docs/preload.md).
    #[arg(long)]
    pub(crate) preload: bool,
}
