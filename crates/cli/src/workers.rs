//! Which worker to run: `--adapter`, `--script` and `--codec`, or the
//! settings file, turned into a `snakepit_adapters::Bridge`.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use serde::Deserialize;
use snakepit_adapters::{Bridge, Language};
use snakepit_core::WireCodec;

use crate::config::FileConfig;
use crate::ui::Failure;

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
    fn of_script(script: &Path) -> Option<Lang> {
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
}

/// The worker to run.
#[derive(Debug, Clone)]
pub(crate) struct Worker {
    pub(crate) lang: Lang,
    /// `None`: the bundled generic worker.
    pub(crate) script: Option<PathBuf>,
    pub(crate) codec: WireCodec,
}

impl Worker {
    /// Flags first; the file's adapter and script only when neither flag is given.
    pub(crate) fn choose(args: &WorkerArgs, file: &FileConfig) -> Result<Worker, Failure> {
        let (adapter, script) = if args.adapter.is_some() || args.script.is_some() {
            (args.adapter, args.script.clone())
        } else {
            (file.adapter, file.script.clone())
        };
        let codec = args.codec.or(file.codec).unwrap_or(CodecArg::Json).wire();
        let Some(script) = script else {
            return Ok(Worker {
                lang: adapter.unwrap_or(Lang::Python),
                script: None,
                codec,
            });
        };
        if !script.is_file() {
            return Err(Failure::usage(format!(
                "script {} not found",
                script.display()
            ))
            .hint("give the path of a worker script; without --script the bundled generic worker runs"));
        }
        let lang = match adapter.or_else(|| Lang::of_script(&script)) {
            Some(lang) => lang,
            None => {
                return Err(Failure::usage(format!(
                    "cannot tell the language of {} from its extension",
                    script.display()
                ))
                .hint("pass --adapter python, node or ruby"))
            }
        };
        let script = std::fs::canonicalize(&script).unwrap_or(script);
        Ok(Worker {
            lang,
            script: Some(script),
            codec,
        })
    }

    /// The adapter; `interpreter` replaces discovery when given.
    pub(crate) fn bridge(&self, interpreter: Option<&Path>) -> Bridge {
        let bridge = match (&self.script, self.lang) {
            (None, lang) => Bridge::generic(lang.language()),
            (Some(s), Lang::Python) => Bridge::python(s),
            (Some(s), Lang::Node) => Bridge::node(s),
            (Some(s), Lang::Ruby) => Bridge::ruby(s),
        };
        let bridge = bridge.codec(self.codec);
        match interpreter {
            Some(i) => bridge.interpreter(i),
            None => bridge,
        }
    }

    /// How to name it to people: `python (generic)`, `node worker.js`.
    pub(crate) fn describe(&self) -> String {
        match &self.script {
            None => format!("{} generic worker", self.lang.name()),
            Some(s) => format!("{} {}", self.lang.name(), s.display()),
        }
    }
}
