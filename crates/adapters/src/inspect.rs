//! What this machine has for each language: the interpreter the adapters
//! would run, its version and real binary, and the packages the bridges can
//! use. This is what `snakepit doctor` reports; it lives here because this
//! crate is the one that knows the languages.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::{embedded, Bridge, Language};

/// A package a bundled bridge can use when it is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BridgePackage {
    /// Its name in the language's registry (`msgpack`, `@msgpack/msgpack`).
    pub name: &'static str,
    /// What needs it.
    pub needed_for: &'static str,
    /// The command that installs it, for the language's usual interpreter
    /// (`python3`); [`Inspection::install_command`] names the one found.
    pub install: &'static str,
}

/// What [`Language::inspect`] found.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Inspection {
    /// The language.
    pub language: Language,
    /// The interpreter the adapters would run (explicit variable,
    /// virtualenv, or a bare name looked up on `PATH`).
    pub program: PathBuf,
    /// Where `program` is: for a bare name, the first file of that name on
    /// `PATH` that may be executed; for a path, that path when a file is
    /// there (whether it may be executed or not). `None` when there is
    /// none.
    pub path: Option<PathBuf>,
    /// Its first line of `--version` (of stdout, else of stderr); `None`
    /// when it could not run, did not end within 10 s, or ended with a
    /// failure (a version-manager shim whose version is not installed
    /// prints why on stderr and fails: that is no version).
    pub version: Option<String>,
    /// A version-manager shim (pyenv, asdf, rbenv, mise) stands in for the
    /// real binary: each start costs the shim's time too.
    pub shim: bool,
    /// The interpreter's own binary, as it reports it.
    pub real_binary: Option<PathBuf>,
    /// Each bridge package with its version (`"?"` when present without
    /// one to read), `None` when missing.
    pub packages: Vec<(BridgePackage, Option<String>)>,
}

impl Inspection {
    /// The command that installs `package` for the interpreter inspected:
    /// for Python, that interpreter's own `-m pip` (a `SNAKEPIT_PYTHON` or a
    /// virtualenv may not be `python3`), its path quoted for a POSIX shell
    /// when it holds anything but letters, digits and `/._+-:,@%`; for the
    /// others, `package.install`.
    pub fn install_command(&self, package: &BridgePackage) -> String {
        match self.language {
            Language::Python => {
                let program = shell_word(&self.program.to_string_lossy());
                format!("{program} -m pip install {}", package.name)
            }
            Language::Node | Language::Ruby => package.install.to_owned(),
        }
    }
}

/// `text` as one word of a POSIX shell command line: as it is when every
/// character is one no shell treats specially, else in single quotes (a
/// `'` in it written `'\''`).
fn shell_word(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._+-:,@%".contains(c));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// The Python probe of the bridge packages. `python -c` puts the working
/// directory first on `sys.path`; it is taken off before any import, so
/// that a module there (a `json.py`, a `msgpack/` checkout) neither runs
/// nor stands in for the package a worker would import. A package that
/// fails as it is imported, even by exiting, counts as missing, and the
/// others are still reported.
const PY_PACKAGES: &str = r#"
import sys
if sys.path and sys.path[0] in ("", "."):
    del sys.path[0]
import importlib, json
out = {}
for dist, module in (("msgpack", "msgpack"), ("opentelemetry-api", "opentelemetry.trace")):
    try:
        importlib.import_module(module)
    except BaseException:
        out[dist] = None
        continue
    try:
        from importlib.metadata import version
        out[dist] = version(dist)
    except Exception:
        out[dist] = "?"
print(json.dumps(out))
"#;

const JS_PACKAGES: &str = r#"
const fs = require('fs'), path = require('path');
const out = {};
for (const name of ['@msgpack/msgpack', '@opentelemetry/api']) {
  let dir;
  try { dir = path.dirname(require.resolve(name)); } catch (e) { out[name] = null; continue; }
  out[name] = '?';
  for (; dir !== path.dirname(dir); dir = path.dirname(dir)) {
    try {
      const p = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8'));
      if (p.name === name) { out[name] = p.version; break; }
    } catch (e) { /* not this folder */ }
  }
}
console.log(JSON.stringify(out));
"#;

/// The Ruby probe of the bridge packages: as the Python one, a gem that
/// fails as it is loaded (whatever it raises) counts as missing.
const RB_PACKAGES: &str = r#"
require "json"
out = {}
[["msgpack", "msgpack"], ["opentelemetry-api", "opentelemetry"]].each do |gem, lib|
  begin
    require lib
    spec = Gem.loaded_specs[gem]
    out[gem] = spec ? spec.version.to_s : "?"
  rescue Exception
    out[gem] = nil
  end
end
puts JSON.generate(out)
"#;

impl Language {
    /// Every language with a bundled bridge.
    pub const ALL: [Language; 3] = [Language::Python, Language::Node, Language::Ruby];

    /// `python`, `node` or `ruby`.
    pub fn name(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Node => "node",
            Language::Ruby => "ruby",
        }
    }

    /// How to install the interpreter (Debian), or point the adapters at one.
    pub fn install_hint(self) -> &'static str {
        match self {
            Language::Python => {
                "apt-get install python3 (or set SNAKEPIT_PYTHON to an interpreter)"
            }
            Language::Node => "apt-get install nodejs (or set SNAKEPIT_NODE to an interpreter)",
            Language::Ruby => "apt-get install ruby (or set SNAKEPIT_RUBY to an interpreter)",
        }
    }

    /// The packages the language's bridge can use: MessagePack (needed for
    /// that codec) and the OpenTelemetry API (optional).
    pub fn bridge_packages(self) -> &'static [BridgePackage] {
        const TRACE: &str = "trace context in workers (optional)";
        match self {
            Language::Python => &[
                BridgePackage {
                    name: "msgpack",
                    needed_for: "--codec msgpack",
                    install: "python3 -m pip install msgpack",
                },
                BridgePackage {
                    name: "opentelemetry-api",
                    needed_for: TRACE,
                    install: "python3 -m pip install opentelemetry-api",
                },
            ],
            Language::Node => &[
                BridgePackage {
                    name: "@msgpack/msgpack",
                    needed_for: "--codec msgpack",
                    install: "npm install @msgpack/msgpack (in your worker's project)",
                },
                BridgePackage {
                    name: "@opentelemetry/api",
                    needed_for: TRACE,
                    install: "npm install @opentelemetry/api (in your worker's project)",
                },
            ],
            Language::Ruby => &[
                BridgePackage {
                    name: "msgpack",
                    needed_for: "--codec msgpack",
                    install: "gem install msgpack (Debian: apt-get install ruby-msgpack)",
                },
                BridgePackage {
                    name: "opentelemetry-api",
                    needed_for: TRACE,
                    install: "gem install opentelemetry-api",
                },
            ],
        }
    }

    fn real_binary_probe(self) -> [&'static str; 2] {
        match self {
            Language::Python => ["-c", "import sys; print(sys.executable)"],
            Language::Node => ["-p", "process.execPath"],
            Language::Ruby => ["-e", "print RbConfig.ruby"],
        }
    }

    fn packages_probe(self) -> [&'static str; 2] {
        match self {
            Language::Python => ["-c", PY_PACKAGES],
            Language::Node => ["-e", JS_PACKAGES],
            Language::Ruby => ["-e", RB_PACKAGES],
        }
    }

    /// The interpreter to run for measurements: the `SNAKEPIT_*` variable
    /// when set, otherwise the real binary behind the discovered program
    /// (a pyenv shim costs about 100 ms a start), otherwise the program.
    pub fn real_interpreter(self) -> PathBuf {
        let program = self.find_interpreter(None);
        if std::env::var_os(self.env_var()).is_some_and(|v| !v.is_empty()) {
            return program;
        }
        run(&program, &self.real_binary_probe())
            .filter(|(ok, out, _)| *ok && !out.is_empty())
            .map_or(program, |(_, out, _)| PathBuf::from(out))
    }

    /// Runs the interpreter a few times to see what is there. Never fails:
    /// what could not be found is `None`, and so is what a run that did not
    /// end within 10 s would have said (that run is killed).
    pub fn inspect(self) -> Inspection {
        let program = self.find_interpreter(None);
        let path = which(&program);
        let version =
            run(&program, &["--version"])
                .filter(|(ok, _, _)| *ok)
                .map(|(_, out, err)| {
                    let text = if out.is_empty() { err } else { out };
                    text.lines().next().unwrap_or_default().to_owned()
                });
        let mut found = Inspection {
            language: self,
            shim: path.as_deref().is_some_and(is_shim),
            program: program.clone(),
            path,
            version,
            real_binary: None,
            packages: self.bridge_packages().iter().map(|p| (*p, None)).collect(),
        };
        if found.version.is_none() {
            return found;
        }
        found.real_binary = run(&program, &self.real_binary_probe())
            .filter(|(ok, out, _)| *ok && !out.is_empty())
            .map(|(_, out, _)| PathBuf::from(out));
        let versions: serde_json::Value = run(&program, &self.packages_probe())
            .and_then(|(_, out, _)| serde_json::from_str(out.lines().last()?).ok())
            .unwrap_or_default();
        for (package, version) in &mut found.packages {
            *version = versions[package.name].as_str().map(str::to_owned);
        }
        found
    }
}

impl Bridge {
    /// A worker of `language` that sleeps `delay` before its handshake, then
    /// serves the bridge's built-in `ping`: a stand-in for a worker that
    /// loads a model, for measuring start-up.
    pub fn with_init_delay(language: Language, delay: Duration) -> std::io::Result<Bridge> {
        Bridge::with_init(language, delay, 0)
    }

    /// As [`with_init_delay`](Bridge::with_init_delay), and the worker's
    /// module-level code also fills `hold_mb` MiB of memory it keeps and
    /// only reads: a stand-in for a loaded model, for measuring what
    /// preloading shares.
    pub fn with_init(language: Language, delay: Duration, hold_mb: u64) -> std::io::Result<Bridge> {
        let ms = delay.as_millis();
        let secs = delay.as_secs_f64();
        // Filled with a byte that is not zero, so that the pages are really
        // there (a zeroed allocation may stay unmapped).
        let (ext, text) = match language {
            Language::Python => (
                "py",
                format!("import time\nMODEL = b\"m\" * ({hold_mb} << 20)\ntime.sleep({secs})\nimport snakepit_bridge\nsnakepit_bridge.Worker().run()\n"),
            ),
            Language::Node => (
                "js",
                format!("const MODEL = Buffer.alloc({hold_mb} * 1048576, 109);\nAtomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, {ms});\nconst {{ Worker }} = require('snakepit-bridge');\nnew Worker().run();\n"),
            ),
            Language::Ruby => (
                "rb",
                format!("MODEL = \"m\" * ({hold_mb} << 20)\nsleep({secs})\nrequire \"snakepit_bridge\"\nSnakepitBridge::Worker.new.run\n"),
            ),
        };
        let dir = embedded::root()?.join("init_delay");
        std::fs::create_dir_all(&dir)?;
        let script = dir.join(format!("init_delay_{ms}_{hold_mb}.{ext}"));
        if !script.exists() {
            // Written aside then renamed: a concurrent start never runs half a file.
            static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tmp = dir.join(format!(".{ms}_{hold_mb}.{ext}.{}-{n}", std::process::id()));
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, &script)?;
        }
        Ok(Bridge::script(language, script))
    }
}

/// How long one probe of an interpreter may take: one that hangs (a
/// broken shim, a stub waiting for input it never gets) counts as absent.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The most of each of a probe's outputs that is kept.
const PROBE_OUTPUT: u64 = 64 << 10;

/// Runs a probe of an interpreter: whether it succeeded, stdout, stderr
/// (the first [`PROBE_OUTPUT`] bytes of each); `None` if it could not run
/// or did not end within [`PROBE_TIMEOUT`] (it is then killed).
#[allow(clippy::disallowed_methods)] // probing an interpreter, not starting a worker
fn run(program: &Path, args: &[&str]) -> Option<(bool, String, String)> {
    use std::io::Read;
    let mut command = std::process::Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Its own group, killed if this thread ends first (a `snakepit doctor`
    // stopped by a signal): a probe never outlives what inspects.
    snakepit_core::die_with_this_thread(&mut command);
    let mut child = command.spawn().ok()?;
    // Both pipes are read while it runs, so that a full one cannot stall it.
    let (tx, rx) = std::sync::mpsc::channel();
    for (n, pipe) in [
        (
            0,
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
        (
            1,
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                // What a version or a probe prints fits in far less; the
                // rest is read and dropped, so that an interpreter that
                // floods its output neither stalls on a full pipe nor
                // fills this process's memory.
                let _ = (&mut pipe).take(PROBE_OUTPUT).read_to_end(&mut bytes);
                let _ = std::io::copy(&mut pipe, &mut std::io::sink());
            }
            let _ = tx.send((n, bytes));
        });
    }
    let until = std::time::Instant::now() + PROBE_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(2));
            }
            _ => {
                // The probe and whatever it started.
                snakepit_core::kill_group(child.id());
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    };
    // A child it left behind may hold the pipes open: not waited for long.
    let mut outputs = [Vec::new(), Vec::new()];
    for _ in 0..2 {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok((n, bytes)) => outputs[n] = bytes,
            Err(_) => break,
        }
    }
    let [stdout, stderr] = outputs;
    Some((
        status.success(),
        String::from_utf8_lossy(&stdout).trim().to_owned(),
        String::from_utf8_lossy(&stderr).trim().to_owned(),
    ))
}

/// `program` as the OS would find it on `PATH`: the first file of that
/// name that may be executed (the OS passes over one that may not, as it
/// does over a directory, and runs the next).
fn which(program: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn is_shim(path: &Path) -> bool {
    let s = path.to_string_lossy();
    ["/shims/", "/.asdf/", "/mise/"]
        .iter()
        .any(|part| s.contains(part))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_is_inspected_for_real() {
        let found = Language::Python.inspect();
        let version = found.version.expect("CI has python3");
        assert!(version.starts_with("Python 3"), "{version}");
        assert!(found.real_binary.is_some_and(|p| p.is_absolute()));
        let msgpack = found
            .packages
            .iter()
            .find(|(p, _)| p.name == "msgpack")
            .expect("msgpack is checked");
        assert!(
            msgpack.1.is_some(),
            "CI installs msgpack: {:?}",
            found.packages
        );
    }

    #[test]
    fn install_commands_quote_what_a_shell_would_split() {
        assert_eq!(shell_word("/usr/bin/python3.11"), "/usr/bin/python3.11");
        assert_eq!(
            shell_word("/opt/my py/bin/python"),
            "'/opt/my py/bin/python'"
        );
        assert_eq!(shell_word("/a'b/$x"), "'/a'\\''b/$x'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn shims_are_recognised() {
        assert!(is_shim(Path::new("/root/.pyenv/shims/python3")));
        assert!(!is_shim(Path::new("/usr/bin/python3")));
    }
}
