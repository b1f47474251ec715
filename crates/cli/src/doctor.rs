//! `snakepit doctor`: which interpreters and bridge packages this machine
//! has, whether each language's bundled worker really answers a ping, and
//! what to install for what is missing.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};
use snakepit_adapters::{Bridge, Language};
use snakepit_core::Pool;

use crate::ui::Output;

pub(crate) const EXAMPLES: &str = "\
Examples:
  snakepit doctor
  snakepit doctor --json
  SNAKEPIT_PYTHON=/opt/venv/bin/python snakepit doctor

Exits 0 when at least one language's worker answers a ping, 1 otherwise.";

/// A package a bridge can use.
struct Package {
    name: &'static str,
    needed_for: &'static str,
    install: &'static str,
}

struct Lang {
    language: Language,
    name: &'static str,
    install: &'static str,
    version_args: &'static [&'static str],
    /// Prints a JSON object: package name -> version, `"?"`, or null when missing.
    probe: &'static [&'static str],
    packages: &'static [Package],
}

const PY_PROBE: &str = r#"
import importlib, json
out = {}
for dist, module in (("msgpack", "msgpack"), ("opentelemetry-api", "opentelemetry.trace")):
    try:
        importlib.import_module(module)
    except Exception:
        out[dist] = None
        continue
    try:
        from importlib.metadata import version
        out[dist] = version(dist)
    except Exception:
        out[dist] = "?"
print(json.dumps(out))
"#;

const JS_PROBE: &str = r#"
const fs = require('fs'), path = require('path');
const out = {};
for (const name of ['@msgpack/msgpack', '@opentelemetry/api']) {
  let dir;
  try { dir = path.dirname(require.resolve(name)); } catch (e) { out[name] = null; continue; }
  out[name] = '?';
  for (; dir !== path.dirname(dir); dir = path.dirname(dir)) {
    const f = path.join(dir, 'package.json');
    try {
      const p = JSON.parse(fs.readFileSync(f, 'utf8'));
      if (p.name === name) { out[name] = p.version; break; }
    } catch (e) { /* not this folder */ }
  }
}
console.log(JSON.stringify(out));
"#;

const RB_PROBE: &str = r#"
require "json"
out = {}
[["msgpack", "msgpack"], ["opentelemetry-api", "opentelemetry"]].each do |gem, lib|
  begin
    require lib
    spec = Gem.loaded_specs[gem]
    out[gem] = spec ? spec.version.to_s : "?"
  rescue LoadError
    out[gem] = nil
  end
end
puts JSON.generate(out)
"#;

const LANGS: &[Lang] = &[
    Lang {
        language: Language::Python,
        name: "python",
        install: "apt-get install python3 (or set SNAKEPIT_PYTHON to an interpreter)",
        version_args: &["--version"],
        probe: &["-c", PY_PROBE],
        packages: &[
            Package {
                name: "msgpack",
                needed_for: "--codec msgpack",
                install: "python3 -m pip install msgpack",
            },
            Package {
                name: "opentelemetry-api",
                needed_for: "trace context in workers (optional)",
                install: "python3 -m pip install opentelemetry-api",
            },
        ],
    },
    Lang {
        language: Language::Node,
        name: "node",
        install: "apt-get install nodejs (or set SNAKEPIT_NODE to an interpreter)",
        version_args: &["--version"],
        probe: &["-e", JS_PROBE],
        packages: &[
            Package {
                name: "@msgpack/msgpack",
                needed_for: "--codec msgpack",
                install: "npm install @msgpack/msgpack (in your worker's project)",
            },
            Package {
                name: "@opentelemetry/api",
                needed_for: "trace context in workers (optional)",
                install: "npm install @opentelemetry/api (in your worker's project)",
            },
        ],
    },
    Lang {
        language: Language::Ruby,
        name: "ruby",
        install: "apt-get install ruby (or set SNAKEPIT_RUBY to an interpreter)",
        version_args: &["--version"],
        probe: &["-e", RB_PROBE],
        packages: &[
            Package {
                name: "msgpack",
                needed_for: "--codec msgpack",
                install: "gem install msgpack (Debian: apt-get install ruby-msgpack)",
            },
            Package {
                name: "opentelemetry-api",
                needed_for: "trace context in workers (optional)",
                install: "gem install opentelemetry-api",
            },
        ],
    },
];

#[derive(Debug, Serialize)]
struct Interpreter {
    language: &'static str,
    program: PathBuf,
    /// Where `program` is, when it was found on PATH.
    path: Option<PathBuf>,
    version: Option<String>,
    /// The bundled generic worker started and answered a ping in this time.
    ping_ms: Option<u64>,
    error: Option<String>,
    note: Option<String>,
}

#[derive(Debug, Serialize)]
struct PackageReport {
    language: &'static str,
    package: &'static str,
    /// `"?"` when present with no version to read.
    version: Option<String>,
    present: bool,
    needed_for: &'static str,
    install: &'static str,
}

/// Runs a probe of an interpreter: its stdout and stderr, if it ran.
#[allow(clippy::disallowed_methods)] // probing an interpreter, not starting a worker
fn probe(program: &Path, args: &[&str]) -> Option<(bool, String, String)> {
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    Some((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    ))
}

/// `program` on PATH, as the OS would find it.
fn which(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Starts one bundled generic worker and pings it.
async fn ping(language: Language) -> Result<u64, String> {
    let started = Instant::now();
    let pool = Pool::builder(Bridge::generic(language))
        .size(1)
        .configure(|c| {
            c.startup_timeout = Duration::from_secs(15);
            c.worker_init_timeout = Duration::from_secs(15);
        })
        .start()
        .await
        .map_err(|e| e.to_string())?;
    let r = pool.execute("ping", json!({})).await;
    let _ = pool.shutdown().await;
    match r {
        Ok(v) if v["status"] == "ok" => Ok(started.elapsed().as_millis() as u64),
        Ok(v) => Err(format!("unexpected ping reply {v}")),
        Err(e) => Err(e.to_string()),
    }
}

async fn examine() -> (Vec<Interpreter>, Vec<PackageReport>) {
    let mut interpreters = Vec::new();
    let mut packages = Vec::new();
    for lang in LANGS {
        let program = lang.language.find_interpreter(None);
        let path = which(&program);
        let version = probe(&program, lang.version_args).map(|(_, out, err)| {
            // Python 2 printed its version on stderr.
            let v = if out.is_empty() { err } else { out };
            v.lines().next().unwrap_or_default().to_owned()
        });
        let mut it = Interpreter {
            language: lang.name,
            program: program.clone(),
            path: path.clone(),
            version,
            ping_ms: None,
            error: None,
            note: None,
        };
        if it.version.is_none() {
            it.error = Some(format!("`{}` not found", program.display()));
            interpreters.push(it);
            for p in lang.packages {
                packages.push(PackageReport {
                    language: lang.name,
                    package: p.name,
                    version: None,
                    present: false,
                    needed_for: p.needed_for,
                    install: p.install,
                });
            }
            continue;
        }
        if lang.language == Language::Python && path.as_ref().is_some_and(|p| is_shim(p)) {
            if let Some((true, real, _)) =
                probe(&program, &["-c", "import sys; print(sys.executable)"])
            {
                it.note = Some(format!(
                    "{} is a version-manager shim (about 100 ms a start); set SNAKEPIT_PYTHON={real}",
                    program.display()
                ));
            }
        }
        match ping(lang.language).await {
            Ok(ms) => it.ping_ms = Some(ms),
            Err(e) => it.error = Some(e),
        }
        let found: Value = probe(&program, lang.probe)
            .and_then(|(_, out, _)| serde_json::from_str(out.lines().last()?).ok())
            .unwrap_or(Value::Null);
        for p in lang.packages {
            let version = found[p.name].as_str().map(str::to_owned);
            packages.push(PackageReport {
                language: lang.name,
                package: p.name,
                present: version.is_some(),
                version,
                needed_for: p.needed_for,
                install: p.install,
            });
        }
        interpreters.push(it);
    }
    (interpreters, packages)
}

fn is_shim(path: &Path) -> bool {
    let s = path.to_string_lossy();
    s.contains("/shims/") || s.contains("/.asdf/") || s.contains("/mise/")
}

pub(crate) fn run(as_json: bool, out: &Output) -> ExitCode {
    let runtime = match crate::runtime() {
        Ok(r) => r,
        Err(f) => {
            out.failure(&f);
            return ExitCode::from(f.code);
        }
    };
    let (interpreters, packages) = runtime.block_on(examine());
    let ok = interpreters.iter().any(|i| i.ping_ms.is_some());
    if as_json {
        outln!(
            "{}",
            json!({"ok": ok, "interpreters": interpreters, "packages": packages})
        );
    } else {
        print_report(&interpreters, &packages, ok, out);
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::ui::code::FAILED)
    }
}

fn print_report(interpreters: &[Interpreter], packages: &[PackageReport], ok: bool, out: &Output) {
    let c = out.color_stdout;
    let good = |s: &str| Output::paint(c, "32", s);
    let bad = |s: &str| Output::paint(c, "33", s);
    let mut todo = Vec::new();
    outln!("{}", Output::paint(c, "1", "Interpreters"));
    for (it, lang) in interpreters.iter().zip(LANGS) {
        let status = match (&it.version, it.ping_ms) {
            (_, Some(_)) => good("ok     "),
            (Some(_), None) => bad("failed "),
            (None, None) => bad("missing"),
        };
        let path = it.path.as_ref().map_or_else(
            || it.program.display().to_string(),
            |p| p.display().to_string(),
        );
        match (&it.version, it.ping_ms) {
            (Some(v), Some(ms)) => {
                outln!("  {status} {:<7} {v} ({path}); bundled worker answered a ping, {ms} ms from start", it.language)
            }
            (Some(v), None) => outln!(
                "  {status} {:<7} {v} ({path}); the bundled worker failed: {}",
                it.language,
                it.error.as_deref().unwrap_or("")
            ),
            (None, _) => {
                outln!("  {status} {:<7} `{path}` not found", it.language);
                todo.push(lang.install.to_owned());
            }
        }
        if let Some(note) = &it.note {
            outln!("          note: {note}");
        }
    }
    outln!("{}", Output::paint(c, "1", "Bridge packages"));
    for p in packages {
        let installed = interpreters
            .iter()
            .any(|i| i.language == p.language && i.version.is_some());
        let (status, what) = match (&p.version, installed) {
            (Some(v), _) => (good("ok     "), format!("{} {v}", p.package)),
            (None, true) => {
                todo.push(p.install.to_owned());
                (bad("missing"), p.package.to_owned())
            }
            (None, false) => (bad("missing"), format!("{} (no interpreter)", p.package)),
        };
        outln!(
            "  {status} {:<7} {what:<28} for {}",
            p.language,
            p.needed_for
        );
    }
    if todo.is_empty() {
        outln!("\nEverything is there.");
    } else {
        outln!("\nTo install what is missing:");
        for t in todo {
            outln!("  {t}");
        }
    }
    if !ok {
        outln!("\nNo language's worker could start: install at least one interpreter.");
    }
}
