//! `snakepit doctor`: which interpreters and bridge packages this machine
//! has, whether each language's bundled worker really answers a ping, and
//! what to install for what is missing.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use snakepit_adapters::{Bridge, Language};
use snakepit_core::Pool;

use crate::ui::{style, Failure, Output};

pub(crate) const EXAMPLES: &str = "\
Examples:
  snakepit doctor
  snakepit doctor --json
  SNAKEPIT_PYTHON=/opt/venv/bin/python snakepit doctor

Exits 0 when at least one language's worker answers a ping, 1 otherwise.";

#[derive(Debug, Serialize)]
struct Interpreter {
    language: &'static str,
    /// How to install it.
    install: &'static str,
    #[serde(serialize_with = "lossy_path")]
    program: PathBuf,
    /// Where `program` is, when it was found on PATH.
    #[serde(serialize_with = "lossy_optional_path")]
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
    install: String,
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
    for language in Language::ALL {
        let found = language.inspect();
        let mut it = Interpreter {
            language: language.name(),
            install: language.install_hint(),
            program: found.program.clone(),
            path: found.path.clone(),
            version: found.version.clone(),
            ping_ms: None,
            error: None,
            note: None,
        };
        if found.shim {
            if let Some(real) = &found.real_binary {
                it.note = Some(format!(
                    "{} is a version-manager shim (about 100 ms a start); set {}={}",
                    found.program.display(),
                    match language {
                        Language::Python => "SNAKEPIT_PYTHON",
                        Language::Node => "SNAKEPIT_NODE",
                        _ => "SNAKEPIT_RUBY",
                    },
                    real.display()
                ));
            }
        }
        if found.version.is_some() {
            match ping(language).await {
                Ok(ms) => it.ping_ms = Some(ms),
                Err(e) => it.error = Some(e),
            }
        } else if let Some(path) = &found.path {
            // The file is there: installing an interpreter would not help.
            it.error = Some(format!(
                "`{}` is there but did not run or did not give its version (`{} --version`)",
                path.display(),
                path.display()
            ));
        } else {
            it.error = Some(format!("`{}` not found", found.program.display()));
        }
        for (p, version) in &found.packages {
            packages.push(PackageReport {
                language: language.name(),
                package: p.name,
                present: version.is_some(),
                version: version.clone(),
                needed_for: p.needed_for,
                install: found.install_command(p),
            });
        }
        interpreters.push(it);
    }
    (interpreters, packages)
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
    let printed = if as_json {
        outln!(
            "{}",
            json!({"ok": ok, "interpreters": interpreters, "packages": packages})
        )
    } else {
        print_report(&interpreters, &packages, ok, out)
    };
    if let Err(f) = printed {
        out.failure(&f);
        return ExitCode::from(f.code);
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::ui::code::FAILED)
    }
}

fn print_report(
    interpreters: &[Interpreter],
    packages: &[PackageReport],
    ok: bool,
    out: &Output,
) -> Result<(), Failure> {
    // Versions, paths and errors come from the interpreters and packages
    // found: what would drive the terminal is written escaped.
    use crate::ui::one_line;
    let c = out.color_stdout;
    let good = |s: &str| Output::paint(c, style::GOOD, s);
    let bad = |s: &str| Output::paint(c, style::BAD, s);
    let mut todo = Vec::new();
    outln!("{}", Output::paint(c, style::BOLD, "Interpreters"))?;
    for it in interpreters {
        let status = match (&it.version, it.ping_ms, &it.path) {
            (_, Some(_), _) => good("ok     "),
            (Some(_), None, _) | (None, None, Some(_)) => bad("failed "),
            (None, None, None) => bad("missing"),
        };
        let path = one_line(&it.path.as_ref().map_or_else(
            || it.program.display().to_string(),
            |p| p.display().to_string(),
        ));
        let version = it.version.as_deref().map(one_line);
        match (&version, it.ping_ms) {
            (Some(v), Some(ms)) => outln!(
                "  {status} {:<7} {v} ({path}); bundled worker answered a ping, {ms} ms from start",
                it.language
            )?,
            (Some(v), None) => outln!(
                "  {status} {:<7} {v} ({path}); the bundled worker failed: {}",
                it.language,
                one_line(it.error.as_deref().unwrap_or(""))
            )?,
            (None, _) => {
                match (&it.path, &it.error) {
                    (Some(_), Some(error)) => {
                        outln!("  {status} {:<7} {}", it.language, one_line(error))?
                    }
                    _ => outln!("  {status} {:<7} `{path}` not found", it.language)?,
                }
                todo.push(it.install.to_owned());
            }
        }
        if let Some(note) = &it.note {
            outln!("          note: {}", one_line(note))?;
        }
    }
    outln!("{}", Output::paint(c, style::BOLD, "Bridge packages"))?;
    for p in packages {
        let installed = interpreters
            .iter()
            .any(|i| i.language == p.language && i.version.is_some());
        let (status, what) = match (&p.version, installed) {
            (Some(v), _) => (good("ok     "), format!("{} {}", p.package, one_line(v))),
            (None, true) => {
                todo.push(p.install.clone());
                (bad("missing"), p.package.to_owned())
            }
            (None, false) => (bad("missing"), format!("{} (no interpreter)", p.package)),
        };
        outln!(
            "  {status} {:<7} {what:<28} for {}",
            p.language,
            p.needed_for
        )?;
    }
    if todo.is_empty() {
        outln!("\nEverything is there.")?;
    } else {
        outln!("\nTo install what is missing:")?;
        for t in todo {
            outln!("  {}", one_line(&t))?;
        }
    }
    if !ok {
        outln!("\nNo language's worker could start: install at least one interpreter.")?;
    }
    Ok(())
}

/// A path as JSON text, U+FFFD where its bytes are not UTF-8 (an
/// interpreter in a directory named so still gets its report).
fn lossy_path<S: serde::Serializer>(p: &std::path::Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

fn lossy_optional_path<S: serde::Serializer>(p: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => s.serialize_some(&p.to_string_lossy()),
        None => s.serialize_none(),
    }
}
