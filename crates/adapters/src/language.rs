//! The languages with a bundled bridge, and where each one's interpreter is
//! found.

use std::path::PathBuf;

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
    /// The variable that names the interpreter (`SNAKEPIT_PYTHON`, ...).
    pub(crate) fn env_var(self) -> &'static str {
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

    /// The path-list variable the language finds its modules through.
    pub(crate) fn path_var(self) -> &'static str {
        match self {
            Language::Python => "PYTHONPATH",
            Language::Node => "NODE_PATH",
            Language::Ruby => "RUBYLIB",
        }
    }

    /// The interpreter to run: explicit, environment, virtualenv, `PATH`.
    /// A relative path with a directory in it (`.venv/bin/python`) is made
    /// absolute from the host's working directory, as a shell would read
    /// it: a worker may run in another directory (`cwd`). A bare name is
    /// looked up on `PATH`.
    pub fn find_interpreter(self, explicit: Option<&PathBuf>) -> PathBuf {
        if let Some(p) = explicit {
            return from_here(p.clone());
        }
        if let Some(p) = std::env::var_os(self.env_var()).filter(|p| !p.is_empty()) {
            return from_here(PathBuf::from(p));
        }
        if self == Language::Python {
            // The host's virtualenv, as an absolute path: a worker may run
            // in another directory. An empty variable names none.
            if let Some(venv) = std::env::var_os("VIRTUAL_ENV").filter(|v| !v.is_empty()) {
                let candidate = std::path::absolute(PathBuf::from(venv).join("bin/python"));
                if let Some(candidate) = candidate.ok().filter(|c| c.exists()) {
                    return candidate;
                }
            }
        }
        PathBuf::from(self.default_program())
    }
}

/// `path` made absolute from this process's working directory if it is
/// relative and names a directory (more than a bare program name).
fn from_here(path: PathBuf) -> PathBuf {
    if path.is_relative() && path.components().count() > 1 {
        std::path::absolute(&path).unwrap_or(path)
    } else {
        path
    }
}
