//! Red-team checks of README.md and docs/cli.md as a new user reads them:
//! the environment variables the docs name, hostile flag values, what a
//! failed `--plot` costs, the fidelity of `exec`'s printed result, the
//! README's Rust lines that CI does not compile (`rust,ignore`), the
//! completion script's flag values, and what `cargo xtask ci` runs. Each
//! runs the real binary (or the library) against real workers and says
//! what the docs promise.

mod common;

use std::path::Path;

use common::*;
use serde_json::json;

/// The workspace's root (this crate is `crates/cli`).
fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The code block of README.md in `lang` (the fence's info string, exactly)
/// that contains `marker`.
fn readme_block(lang: &str, marker: &str) -> String {
    let readme = read("README.md");
    let fence = format!("```{lang}\n");
    readme
        .split(fence.as_str())
        .skip(1)
        .filter_map(|rest| rest.split_once("\n```").map(|(block, _)| block))
        .find(|block| block.contains(marker))
        .unwrap_or_else(|| panic!("README.md has no {lang} block with {marker}"))
        .to_owned()
        + "\n"
}

/// A port nothing listens on (bound, then released).
fn nowhere() -> String {
    format!("nats://127.0.0.1:{}", snakepit_tests::free_port())
}

// ------------------------------------------------------------ environment

/// cli.md, `snakepit.toml`: the file is `./snakepit.toml`, "or the file
/// named by `--config FILE` or `SNAKEPIT_CONFIG`". An empty
/// `SNAKEPIT_CONFIG` (`export SNAKEPIT_CONFIG=` in a profile, a CI variable
/// left blank) names no file: the commands should behave as without it.
/// (Before, clap took it as an empty `--config` and every command, even
/// `completions` and `sweep`, was a usage error about a flag the user never
/// typed.)
#[test]
fn an_empty_snakepit_config_is_no_settings_file() {
    let dir = Dir::new("redteam-empty-config");
    let state = dir.0.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let state = state.to_str().unwrap();
    let env = [("SNAKEPIT_CONFIG", "")];
    for args in [
        &["completions", "bash"][..],
        &["sweep", "--dry-run", "--state-dir", state],
        &["exec", "ping"],
    ] {
        let r = snakepit_in(&dir.0, args, &env, "");
        assert_eq!(r.code, 0, "{args:?}: {r:?}");
        assert!(!r.stderr.contains("--config"), "{args:?}: {r:?}");
    }
}

/// cli.md, `serve` and `exec --cluster`: NATS is "`--nats`, or `NATS_URL`,
/// default `nats://127.0.0.1:4222`". An empty `NATS_URL` names no server,
/// so the default applies (before, the command looked for NATS at the
/// empty address, `cannot reach NATS at : ...`).
#[test]
fn an_empty_nats_url_means_the_default_address() {
    let r = snakepit_in(
        &std::env::temp_dir(),
        &[
            "exec",
            "--cluster",
            &format!("redteam-empty-url-{}", std::process::id()),
            "--timeout",
            "2000",
            "ping",
        ],
        &[("NATS_URL", "")],
        "",
    );
    // Whether or not something serves the default port here, the address
    // looked at must be the default one.
    assert!(!r.stderr.contains("NATS at : "), "{r:?}");
    if r.code == 1 {
        assert!(r.stderr.contains("nats://127.0.0.1:4222"), "{r:?}");
    }
}

/// Runs `snakepit ARGS` in `dir` with the state-directory variables
/// (`SNAKEPIT_STATE_DIR`, `XDG_RUNTIME_DIR`, `TMPDIR`) exactly as `vars`
/// says: `Some` set (perhaps empty), `None` unset.
#[allow(clippy::disallowed_methods)] // runs the tool under test, not a worker
fn with_dir_vars(dir: &Path, args: &[&str], vars: [Option<&str>; 3]) -> Run {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env_remove("SNAKEPIT_CONFIG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    for (name, value) in ["SNAKEPIT_STATE_DIR", "XDG_RUNTIME_DIR", "TMPDIR"]
        .into_iter()
        .zip(vars)
    {
        match value {
            Some(v) => cmd.env(name, v),
            None => cmd.env_remove(name),
        };
    }
    Run::from(cmd.output().expect("snakepit runs"))
}

/// cli.md, `snakepit sweep`: the records live in "`$SNAKEPIT_STATE_DIR`,
/// else `$XDG_RUNTIME_DIR/snakepit`, else `$TMPDIR/snakepit-UID` ...; a
/// variable set to nothing counts as unset, and a relative
/// `XDG_RUNTIME_DIR` or `TMPDIR` is ignored". The directory is absolute
/// whatever the variables say, and a pool writes nothing into the
/// directory it runs in (before, `XDG_RUNTIME_DIR=` put run records in
/// `./snakepit`, `TMPDIR=` in `./snakepit-UID`, and `SNAKEPIT_STATE_DIR=`
/// wrote none).
#[test]
fn empty_or_relative_state_dir_variables_never_put_records_in_the_cwd() {
    let dir = Dir::new("redteam-state-vars");
    let cwd = dir.0.join("cwd");
    let tmp = dir.0.join("tmp");
    let xdg = dir.0.join("xdg");
    for d in [&cwd, &tmp, &xdg] {
        std::fs::create_dir_all(d).unwrap();
    }
    let (tmp, xdg) = (tmp.to_str().unwrap(), xdg.to_str().unwrap());
    for vars in [
        [Some(""), Some(xdg), Some(tmp)],
        [None, Some(""), Some(tmp)],
        [None, Some("relative/run"), Some(tmp)],
        [None, None, Some("")],
    ] {
        let r = with_dir_vars(&cwd, &["sweep", "--dry-run", "--json"], vars);
        assert_eq!(r.code, 0, "{vars:?}: {r:?}");
        let state_dir = r.json()["state_dir"].as_str().unwrap_or("").to_owned();
        assert!(
            Path::new(&state_dir).is_absolute(),
            "{vars:?}: the state directory is {state_dir:?}"
        );
    }
    // A pool started with an empty XDG_RUNTIME_DIR leaves nothing in the
    // directory it ran in.
    let r = with_dir_vars(&cwd, &["exec", "ping"], [None, Some(""), Some(tmp)]);
    assert_eq!(r.code, 0, "{r:?}");
    let left: Vec<_> = std::fs::read_dir(&cwd)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        left.is_empty(),
        "exec wrote {left:?} into its working directory"
    );
}

/// cli.md, `snakepit.toml`: "`sweep` reads only `state_dir` under
/// `[pool]` from it ... unless `--state-dir` is given"; reliability.md: "a
/// relative `SNAKEPIT_STATE_DIR` is taken from the working directory".
#[test]
fn sweep_finds_the_state_dir_of_the_settings_file_and_of_a_relative_variable() {
    let dir = Dir::new("redteam-sweep-toml");
    let records = dir.0.join("records");
    dir.file(
        "snakepit.toml",
        &format!("[pool]\nstate_dir = {:?}\n", records.display().to_string()),
    );
    let state_dir = |r: Run| {
        assert_eq!(r.code, 0, "{r:?}");
        r.json()["state_dir"].as_str().unwrap_or("").to_owned()
    };
    let from_file = state_dir(with_dir_vars(
        &dir.0,
        &["sweep", "--dry-run", "--json"],
        [None, None, None],
    ));
    assert_eq!(Path::new(&from_file), records);
    let flag = dir.0.join("flag");
    let from_flag = state_dir(with_dir_vars(
        &dir.0,
        &[
            "sweep",
            "--dry-run",
            "--json",
            "--state-dir",
            flag.to_str().unwrap(),
        ],
        [None, None, None],
    ));
    assert_eq!(Path::new(&from_flag), flag);
    std::fs::remove_file(dir.0.join("snakepit.toml")).unwrap();
    let relative = state_dir(with_dir_vars(
        &dir.0,
        &["sweep", "--dry-run", "--json"],
        [Some("rel/state"), None, None],
    ));
    assert_eq!(Path::new(&relative), dir.0.join("rel/state"));
}

/// cli.md, `exec`'s exit codes: 3 "the workers could not start
/// (`StartFailed`): interpreter missing"; the hint points at the
/// variables. `SNAKEPIT_NODE` and `SNAKEPIT_RUBY` are honoured by `exec` as
/// `SNAKEPIT_PYTHON` is (the other files only check them in `doctor`).
#[test]
fn exec_with_a_missing_node_or_ruby_interpreter_exits_3_naming_it() {
    for (adapter, var, path) in [
        ("node", "SNAKEPIT_NODE", "/no/such/redteam-node"),
        ("ruby", "SNAKEPIT_RUBY", "/no/such/redteam-ruby"),
    ] {
        let r = snakepit_in(
            &std::env::temp_dir(),
            &["exec", "--adapter", adapter, "ping"],
            &[(var, path)],
            "",
        );
        assert_eq!(r.code, 3, "{adapter}: {r:?}");
        assert!(r.stderr.starts_with("error: "), "{adapter}: {r:?}");
        assert!(r.stderr.contains(path), "{adapter}: {r:?}");
        let hint = r.stderr.lines().last().unwrap_or_default();
        assert!(hint.starts_with("hint: ") && hint.contains(var), "{r:?}");
        assert!(r.stdout.is_empty(), "{r:?}");
    }
}

// ------------------------------------------------------------- bad input

/// cli.md, exit codes: 2 is "usage: a bad flag"; a value a flag cannot take
/// should be refused as one. `bench --init-ms` near `u64::MAX` used to pass
/// the parser, run the whole bench, and then overflow `init_ms * 2 +
/// 10_000` (a panic, exit 101, in a debug build).
#[test]
fn bench_init_ms_out_of_range_is_a_usage_error_not_a_panic() {
    let r = snakepit(&[
        "bench",
        "--requests",
        "64",
        "--concurrency",
        "4",
        "--init-ms",
        "18446744073709551615",
        "--json",
    ]);
    assert!(!r.stderr.contains("panicked"), "{r:?}");
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("--init-ms"), "{r:?}");
}

/// `--plot FILE.svg` "also draws the latency distributions" (the bench's
/// help); the table or `--json` object still goes to stdout. A plot path
/// in a directory that does not exist used to be found out only after
/// every measurement, with nothing on stdout: the run's figures were lost.
/// Either the path is refused before measuring (as a name not ending in
/// `.svg` is, exit 2), or the report is printed all the same.
#[test]
fn an_unwritable_plot_is_refused_up_front_or_the_report_still_prints() {
    let dir = Dir::new("redteam-plot");
    let plot = dir.0.join("no-such-dir").join("latency.svg");
    let r = dir.run(
        &[
            &["bench"][..],
            &SHORT_BENCH_JSON,
            &["--plot", plot.to_str().unwrap()],
        ]
        .concat(),
    );
    assert_ne!(r.code, 0, "the plot cannot be drawn: {r:?}");
    refused_up_front_or_reported(&r, "latency.svg");
}

/// cli.md: `exec --cluster` synopsis is `snakepit exec --cluster NAME
/// [--nats URL] COMMAND [ARGS_JSON]`, and "the result and the exit codes
/// are those of a local `exec`". The worker flags (`--script`, `--adapter`,
/// `--preload`, `--pool-size`, `--codec`, `--pipeline-depth`) mean nothing
/// there (the hosts choose the workers): they are refused, exit 2, rather
/// than silently dropped, as `bench` refuses its cluster-only flags without
/// `--nats`.
#[test]
fn worker_flags_with_exec_cluster_are_usage_errors() {
    let url = nowhere();
    for flags in [
        &["--script", "/no/such/redteam_worker.py"][..],
        &["--adapter", "node", "--preload"],
        &["--pool-size", "3"],
    ] {
        let r = snakepit(
            &[
                &["exec", "--cluster", "ml", "--nats", url.as_str()][..],
                flags,
                &["ping"],
            ]
            .concat(),
        );
        assert_eq!(r.code, 2, "{flags:?}: {r:?}");
        assert!(r.stderr.contains(flags[0]), "{flags:?}: {r:?}");
    }
}

/// cli.md, exit codes: "Errors go to stderr as `error: ...`, then the
/// worker's traceback or stderr tail when there is one, then a `hint:`
/// line." So do the tool's own usage errors (they used to end at the
/// `error:` line): a settings file that is not there, `--timeout 0`,
/// `--pool-size 0`, a `bench` load below its minimum.
#[test]
fn the_tools_own_usage_errors_end_with_a_hint() {
    for args in [
        &["--config", "/no/such/redteam.toml", "exec", "ping"][..],
        &["exec", "--timeout", "0", "ping"],
        &["exec", "--pool-size", "0", "ping"],
        &["bench", "--requests", "10"],
    ] {
        let r = snakepit(args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        let lines: Vec<&str> = r.stderr.lines().collect();
        assert!(
            lines.first().is_some_and(|l| l.starts_with("error: ")),
            "{r:?}"
        );
        assert!(
            lines.last().is_some_and(|l| l.starts_with("hint: ")),
            "{args:?}: {r:?}"
        );
    }
}

// --------------------------------------------------------------- results

/// A worker whose result holds integers past 64 bits (Python's own ints,
/// which its JSON writes exactly) and which echoes its arguments.
const BIG_INTS_PY: &str = r#"
import snakepit_bridge

worker = snakepit_bridge.Worker()

@worker.command("big")
def big(args, ctx):
    return {"two_to_70": 2 ** 70, "args": args}

worker.run()
"#;

/// protocol.md: "In JSON, one outside that range (Python's `2**70` ...)
/// is read by the host as the nearest 64-bit float ... and neither does
/// `snakepit exec`'s output. ... A worker that must pass such a number
/// exactly sends it as a string." Both ways: the worker's `2 ** 70`, and
/// an argument past 64 bits.
#[test]
fn exec_reads_integers_past_64_bits_as_floats_as_protocol_md_says() {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/protocol.md"),
    )
    .unwrap();
    assert!(
        doc.contains("as the nearest 64-bit float"),
        "protocol.md no longer says it"
    );
    let dir = Dir::new("redteam-bigint");
    let script = dir.file("big.py", BIG_INTS_PY);
    let r = dir.run(&[
        "exec",
        "--script",
        &script,
        "big",
        r#"{"id": 123456789012345678901234567890}"#,
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let out: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    // A float near each (serde_json's reading of a long integer may be
    // off in the last bit), no longer the integer.
    for (got, want) in [
        (&out["two_to_70"], 2f64.powi(70)),
        (&out["args"]["id"], 123456789012345678901234567890f64),
    ] {
        assert!(got.is_f64(), "{r:?}");
        let got = got.as_f64().unwrap();
        assert!(
            ((got - want) / want).abs() < 1e-15,
            "{got} against {want}: {r:?}"
        );
    }
}

/// What does hold: integers within 64 bits, signed and unsigned, go to the
/// worker and come back exactly, and the worker's key order is kept.
#[test]
fn exec_keeps_64_bit_integers_exactly() {
    let dir = Dir::new("redteam-int64");
    let script = dir.file("big.py", BIG_INTS_PY);
    let r = dir.run(&[
        "exec",
        "--script",
        &script,
        "big",
        r#"{"u": 18446744073709551615, "i": -9223372036854775808, "odd": 9007199254740993}"#,
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.trim_end().ends_with(
            r#""args":{"u":18446744073709551615,"i":-9223372036854775808,"odd":9007199254740993}}"#
        ),
        "{r:?}"
    );
}

// ------------------------------------------------------- the README's Rust

/// README, quick start: the three `rust,ignore` lines (never compiled by
/// the doc-tests, which skip `ignore`) start pools of the README's own
/// `greet.py`, `greet.js` and `greet.rb`, and those answer the greeting.
/// The lines are checked to be in the README as run here, but for the
/// script's path (absolute, so that the test does not change directory).
#[test]
fn the_readmes_ignored_rust_lines_start_pools_of_its_greet_workers() {
    let readme = read("README.md");
    let dir = Dir::new("redteam-readme-rust");
    let py = dir.file(
        "greet.py",
        &readme_block("python", "snakepit_bridge.Worker()"),
    );
    let js = dir.file("greet.js", &readme_block("js", "// greet.js"));
    let rb = dir.file("greet.rb", &readme_block("ruby", "# greet.rb"));
    for call in [
        "python(\"greet.py\")",
        "node(\"greet.js\")",
        "ruby(\"greet.rb\")",
    ] {
        let line = format!(
            "let pool = Pool::builder(snakepit_adapters::Bridge::{call}).size(2).start().await?;"
        );
        assert!(readme.contains(&line), "README.md no longer has: {line}");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use snakepit_core::Pool;
        let run = |pool: Pool| async move {
            let r = pool
                .execute("greet", json!({"name": "Ada"}))
                .await
                .expect("greet answers");
            assert_eq!(r, json!({"greeting": "Hello, Ada!"}));
            assert_eq!(pool.stats().workers, 2, "{:?}", pool.stats());
            pool.shutdown().await.expect("shuts down");
        };
        let pool = Pool::builder(snakepit_adapters::Bridge::python(&py))
            .size(2)
            .start()
            .await
            .expect("python pool");
        run(pool).await;
        let pool = Pool::builder(snakepit_adapters::Bridge::node(&js))
            .size(2)
            .start()
            .await
            .expect("node pool");
        run(pool).await;
        let pool = Pool::builder(snakepit_adapters::Bridge::ruby(&rb))
            .size(2)
            .start()
            .await
            .expect("ruby pool");
        run(pool).await;
    });
}

/// README: "The examples in `crates/adapters/examples/` reproduce the
/// original README's and run in CI: ..." and "`cargo xtask ci` ... every
/// Rust test and doc-test ... the examples"; "`.ci/run` runs exactly it".
/// Every example the README lists exists and is in `cargo xtask ci`'s list;
/// the doc-tests include README.md (its Rust blocks); `cargo xtask` is an
/// alias that exists; `.ci/run` runs `cargo xtask ci`.
#[test]
fn cargo_xtask_ci_runs_the_examples_and_doc_tests_the_readme_names() {
    let readme = read("README.md");
    let listed = readme
        .split_once("reproduce the original README's\nand run in CI: ")
        .map(|(_, rest)| rest.split_once('.').map(|(l, _)| l).unwrap_or(rest))
        .expect("README lists the examples run in CI");
    let names: Vec<&str> = listed
        .split(',')
        .map(|n| n.trim().trim_matches('`'))
        .filter(|n| !n.is_empty())
        .collect();
    assert!(names.len() >= 10, "{names:?}");
    let xtask = read("xtask/src/main.rs");
    let examples_fn = xtask
        .split_once("fn examples(")
        .map(|(_, rest)| rest.split_once("\n}\n").map(|(f, _)| f).unwrap_or(rest))
        .expect("xtask has fn examples");
    for name in &names {
        assert!(
            root()
                .join(format!("crates/adapters/examples/{name}.rs"))
                .is_file(),
            "README lists example {name}, which does not exist"
        );
        assert!(
            examples_fn.contains(&format!("\"{name}\"")),
            "README says {name} runs in CI; xtask's examples() does not run it"
        );
    }
    let ci_fn = xtask
        .split_once("fn ci(")
        .map(|(_, rest)| rest.split_once("\n}\n").map(|(f, _)| f).unwrap_or(rest))
        .expect("xtask has fn ci");
    for step in [
        "\"--doc\"",
        "examples(root)",
        "bridges(root)",
        "fuzz(",
        "\"fmt\"",
        "\"clippy\"",
    ] {
        assert!(ci_fn.contains(step), "cargo xtask ci lacks {step}");
    }
    assert!(
        read("crates/adapters/src/lib.rs").contains("include_str!(\"../../../README.md\")"),
        "the README's Rust blocks are doc-tested"
    );
    assert!(read(".cargo/config.toml").contains("xtask = \"run"));
    assert!(read(".ci/run")
        .lines()
        .any(|l| l.trim() == "cargo xtask ci"));
}

// ------------------------------------------------------------ completions

/// cli.md, completions: the script completes "subcommands, flags, and the
/// values of flags such as `--adapter` and `--codec`". Bash, given the
/// generated script, offers the three languages after `--adapter`, the two
/// codecs after `--codec`, and the subcommands after `snakepit`.
#[test]
fn bash_completion_offers_the_values_of_adapter_and_codec() {
    let dir = Dir::new("redteam-completion");
    let r = snakepit(&["completions", "bash"]);
    assert_eq!(r.code, 0, "{r:?}");
    let script = dir.file("snakepit.bash", &r.stdout);
    let probe = format!(
        r#"source {script}
complete_words() {{ COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMPREPLY=(); _snakepit snakepit "${{COMP_WORDS[-1]}}" "${{COMP_WORDS[-2]}}"; echo "${{COMPREPLY[*]}}"; }}
complete_words snakepit exec --adapter ""
complete_words snakepit bench --codec ""
complete_words snakepit ""
"#
    );
    let probe_file = dir.file("probe.bash", &probe);
    #[allow(clippy::disallowed_methods)] // runs bash on the script, not a worker
    let out = std::process::Command::new("bash")
        .arg(&probe_file)
        .output()
        .expect("bash runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        3,
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let words = |i: usize| lines[i].split_whitespace().collect::<Vec<_>>();
    assert_eq!(words(0), ["python", "node", "ruby"], "{text}");
    assert_eq!(words(1), ["json", "msgpack"], "{text}");
    for sub in [
        "exec",
        "bench",
        "doctor",
        "sweep",
        "completions",
        "cluster",
        "serve",
    ] {
        assert!(words(2).contains(&sub), "{sub}: {text}");
    }
}
