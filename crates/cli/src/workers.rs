//! Which worker to run: `--adapter`, `--script` and `--codec`, or the
//! settings file, turned into a `snakepit_adapters::Bridge`.

use std::path::{Path, PathBuf};

use snakepit_adapters::Bridge;
use snakepit_core::WireCodec;

use crate::args::{CodecArg, Lang, WorkerArgs};
use crate::config::FileConfig;
use crate::ui::Failure;

/// Preloading forks workers from a template: Node.js cannot fork.
fn check_preload(lang: Lang, preload: bool) -> Result<(), Failure> {
    if preload && lang == Lang::Node {
        return Err(
            Failure::usage("--preload needs a Python or Ruby worker: Node.js cannot fork")
                .hint("drop --preload (or `preload = true` in snakepit.toml) for Node.js workers"),
        );
    }
    Ok(())
}

/// The worker to run.
#[derive(Debug, Clone)]
pub(crate) struct Worker {
    pub(crate) lang: Lang,
    /// `None`: the bundled generic worker.
    pub(crate) script: Option<PathBuf>,
    pub(crate) codec: WireCodec,
    /// Workers are forks of a template that loaded the script once.
    pub(crate) preload: bool,
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
        let preload = args.preload || file.preload;
        let Some(script) = script else {
            let lang = adapter.unwrap_or(Lang::Python);
            check_preload(lang, preload)?;
            return Ok(Worker {
                lang,
                script: None,
                codec,
                preload,
            });
        };
        // What is there under the name, when it is not a regular file (a
        // named pipe is never opened: that would wait for a writer), or why
        // it cannot be looked at (a loop of symbolic links, no permission).
        let what = match crate::config::not_a_file(&script) {
            Some(what) => Some(what.to_owned()),
            None => std::fs::metadata(&script)
                .err()
                .map(|e| format!("cannot be read: {e}")),
        };
        if let Some(what) = what {
            return Err(Failure::usage(format!("script {} {what}", crate::ui::shown_path(&script)))
            .hint("give the path of a worker script; without --script the bundled generic worker runs"));
        }
        let lang = match adapter.or_else(|| Lang::of_script(&script)) {
            Some(lang) => lang,
            None => {
                return Err(Failure::usage(format!(
                    "cannot tell the language of {} from its extension",
                    crate::ui::shown_path(&script)
                ))
                .hint("pass --adapter python, node or ruby"))
            }
        };
        check_preload(lang, preload)?;
        let script = std::fs::canonicalize(&script).unwrap_or(script);
        Ok(Worker {
            lang,
            script: Some(script),
            codec,
            preload,
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
        let bridge = if self.preload {
            bridge.preload()
        } else {
            bridge
        };
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
