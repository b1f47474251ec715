//! The examples and the `cargo xtask` commands, as the docs tell a user to
//! run them (sixth round of outside review, second wave).
//!
//! Every command line the docs give (`cargo run ... --example NAME -- FLAGS`,
//! `cargo xtask SUB FLAGS`) names a package, an example, features, flags and
//! subcommands that exist; every example of this crate is run by `cargo
//! xtask examples` (so by CI); and `cargo xtask` runs the executables cargo
//! built, wherever the target directory is.
//!
//! These tests read the files; the examples themselves run in `cargo xtask
//! examples` (a build of every example is too slow for a test).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

/// Names of the files in `dir` (relative to the root) ending in `ext`,
/// without the extension, sorted.
fn stems(dir: &str, ext: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("cannot list {dir}: {e}"))
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(ext).map(str::to_owned))
        .collect();
    out.sort();
    out
}

/// The docs a user reads: the README, docs/*.md, ARCHITECTURE.md, each
/// crate's and bridge's README, and the examples' own `//!` headers (which
/// give the command that runs them). Each with its whitespace collapsed,
/// so that a command wrapped over two lines reads as one.
fn docs() -> Vec<(String, String)> {
    let mut files = vec!["README.md".to_owned(), "ARCHITECTURE.md".to_owned()];
    for doc in stems("docs", ".md") {
        files.push(format!("docs/{doc}.md"));
    }
    for dir in ["crates", "bridges"] {
        for entry in std::fs::read_dir(root().join(dir)).expect("list").flatten() {
            let readme = entry.path().join("README.md");
            if readme.is_file() {
                files.push(format!(
                    "{dir}/{}/README.md",
                    entry.file_name().to_string_lossy()
                ));
            }
        }
    }
    let mut out: Vec<(String, String)> = files
        .into_iter()
        .map(|f| {
            let text = read(&f);
            (f, collapse(&text))
        })
        .collect();
    for (krate, _) in packages().values() {
        let dir = format!("crates/{krate}/examples");
        if !root().join(&dir).is_dir() {
            continue;
        }
        for example in stems(&dir, ".rs") {
            let file = format!("{dir}/{example}.rs");
            let header: String = read(&file)
                .lines()
                .filter_map(|l| l.strip_prefix("//!"))
                .collect::<Vec<_>>()
                .join("\n");
            out.push((file, collapse(&header)));
        }
    }
    out
}

fn collapse(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Package name -> (its directory under crates/, its Cargo.toml).
fn packages() -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(root().join("crates"))
        .expect("list")
        .flatten()
    {
        let Ok(manifest) = std::fs::read_to_string(entry.path().join("Cargo.toml")) else {
            continue;
        };
        let name = manifest
            .lines()
            .find_map(|l| l.strip_prefix("name = \""))
            .and_then(|l| l.strip_suffix('"'))
            .expect("a package name")
            .to_owned();
        out.insert(
            name,
            (entry.file_name().to_string_lossy().into_owned(), manifest),
        );
    }
    out
}

/// The features a manifest declares (the keys of its `[features]` table).
fn features(manifest: &str) -> Vec<String> {
    let Some((_, table)) = manifest.split_once("\n[features]\n") else {
        return Vec::new();
    };
    table
        .lines()
        .take_while(|l| !l.starts_with('['))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim().to_owned()))
        .filter(|k| !k.is_empty() && !k.starts_with('#'))
        .collect()
}

/// One `cargo run ... --example NAME [-- ARGS]` command found in a doc.
#[derive(Debug)]
struct RunExample {
    doc: String,
    package: String,
    example: String,
    features: Vec<String>,
    args: Vec<String>,
}

/// Every `cargo run` command of the docs that runs an example. A command
/// ends at the end of its code span, a shell comment, or a sentence's
/// closing parenthesis; `[...]` marks an optional part, still checked.
fn run_example_commands() -> Vec<RunExample> {
    let mut out = Vec::new();
    for (doc, text) in docs() {
        for (at, _) in text.match_indices("cargo run ") {
            let rest = &text[at..];
            let end = rest.find(['`', '#', ')']).unwrap_or(rest.len());
            // `[--live URL]`: an optional flag is still a flag.
            let tokens: Vec<&str> = rest[..end]
                .split_whitespace()
                .map(|t| t.trim_matches(['[', ']']))
                .collect();
            let flag = |name: &str| {
                tokens
                    .iter()
                    .position(|t| *t == name)
                    .and_then(|i| tokens.get(i + 1))
                    .map(|s| s.to_string())
            };
            let Some(example) = flag("--example") else {
                continue;
            };
            let package = flag("-p")
                .or_else(|| flag("--package"))
                .unwrap_or_else(|| panic!("{doc}: `{}` names no package", &rest[..end]));
            let features = flag("--features")
                .map(|f| f.split(',').map(str::to_owned).collect())
                .unwrap_or_default();
            let args = tokens
                .iter()
                .position(|t| *t == "--")
                .map(|i| tokens[i + 1..].iter().map(|s| s.to_string()).collect())
                .unwrap_or_default();
            out.push(RunExample {
                doc: doc.clone(),
                package,
                example,
                features,
                args,
            });
        }
    }
    out
}

/// The body of `fn NAME(` in xtask/src/main.rs, up to the function's end.
fn xtask_fn(name: &str) -> String {
    let xtask = read("xtask/src/main.rs");
    let (_, rest) = xtask
        .split_once(&format!("\nfn {name}("))
        .unwrap_or_else(|| panic!("xtask has no fn {name}"));
    rest.split_once("\n}\n").map_or(rest, |(f, _)| f).to_owned()
}

/// README: "`cargo xtask examples` (the examples CI runs)", and `cargo
/// xtask ci` runs "the examples". Every example of this crate, not only the
/// ones the README lists, is run there: an example left out would rot
/// unseen while its doc still tells users to run it.
#[test]
fn cargo_xtask_examples_runs_every_example_of_the_adapters_crate() {
    let examples = stems("crates/adapters/examples", ".rs");
    assert!(examples.len() >= 12, "{examples:?}");
    let body = xtask_fn("examples");
    for name in &examples {
        assert!(
            body.contains(&format!("\"{name}\"")),
            "crates/adapters/examples/{name}.rs is not run by `cargo xtask examples`"
        );
    }
    assert!(
        xtask_fn("ci").contains("examples(root)"),
        "`cargo xtask ci` runs the examples"
    );
    assert!(xtask_fn("main").contains("Some(\"examples\") => examples(&root)"));
}

/// Every `cargo run -p PACKAGE [--features F] --example NAME` the docs
/// give names a package of the workspace, an example of that package,
/// features that package declares, and, after `--`, only flags the example
/// parses (docs/speed.md's `cost -- --runtime current --workers 2 --callers
/// C --pipeline-depth N ...`, docs/telemetry.md's `overhead -- --calls ...
/// --rounds ... --live ...`).
#[test]
fn every_cargo_run_example_command_in_the_docs_runs_as_written() {
    let packages = packages();
    let commands = run_example_commands();
    // The README's first command, preload.md's, speed.md's, sessions.md's
    // two, telemetry.md's, cluster.md's, and the examples' own headers.
    assert!(commands.len() >= 20, "{commands:#?}");
    for needed in [
        "quickstart",
        "preload",
        "cost",
        "ml_workflow",
        "session_bench",
        "overhead",
        "cluster_bench",
    ] {
        assert!(
            commands.iter().any(|c| c.example == needed),
            "no doc command runs {needed}: {commands:#?}"
        );
    }
    for c in &commands {
        let (dir, manifest) = packages
            .get(&c.package)
            .unwrap_or_else(|| panic!("{}: no package {} in crates/", c.doc, c.package));
        let source = root().join(format!("crates/{dir}/examples/{}.rs", c.example));
        assert!(
            source.is_file(),
            "{}: package {} has no example {} ({})",
            c.doc,
            c.package,
            c.example,
            source.display()
        );
        let declared = features(manifest);
        for f in &c.features {
            assert!(
                declared.contains(f),
                "{}: {} has no feature {f} (it has {declared:?})",
                c.doc,
                c.package
            );
        }
        let code = std::fs::read_to_string(&source).expect("read example");
        for arg in c.args.iter().filter(|a| a.starts_with("--")) {
            assert!(
                code.contains(&format!("\"{arg}\"")),
                "{}: the {} example does not take {arg}",
                c.doc,
                c.example
            );
        }
    }
}

/// Each example's own header tells how to run it, and names itself: the
/// `cargo run` line in `crates/adapters/examples/NAME.rs` runs `-p
/// snakepit-adapters --example NAME`, not another example.
#[test]
fn each_adapters_examples_header_runs_that_example() {
    for name in stems("crates/adapters/examples", ".rs") {
        let file = format!("crates/adapters/examples/{name}.rs");
        let own: Vec<RunExample> = run_example_commands()
            .into_iter()
            .filter(|c| c.doc == file)
            .collect();
        assert!(!own.is_empty(), "{file} does not say how to run it");
        for c in own {
            assert_eq!(c.package, "snakepit-adapters", "{file}");
            assert_eq!(c.example, name, "{file}'s header runs another example");
        }
    }
}

/// README: "The first needs Rust and `python3`, nothing else" and "a pool
/// of 4 real Python workers: calls, a session, stats". The quickstart uses
/// the generic Python bridge only (no Node, Ruby or MessagePack), four
/// workers, a session and the stats.
#[test]
fn the_quickstart_needs_python_alone_and_does_what_the_readme_says() {
    let readme = read("README.md");
    let first = readme.lines().nth(3).expect("the README's first command");
    assert!(
        first.starts_with("cargo run --release -p snakepit-adapters --example quickstart")
            && first.contains("a pool of 4 real Python workers: calls, a session, stats"),
        "{first}"
    );
    let code = read("crates/adapters/examples/quickstart.rs");
    for needed in [
        "GenericPython",
        ".size(4)",
        "execute_in_session",
        "pool.stats()",
    ] {
        assert!(code.contains(needed), "the quickstart lacks {needed}");
    }
    for other in ["GenericJavaScript", "GenericRuby", "MsgPack", "msgpack"] {
        assert!(!code.contains(other), "the quickstart needs {other}");
    }
    // What it prints of the session is read by a person: the pids as JSON,
    // not `Value`'s debug form (`[Number(4242), ...]`).
    let session = code
        .lines()
        .find(|l| l.contains("served by pids"))
        .expect("the quickstart prints the session's pids");
    assert!(!session.contains(":?"), "{session}");
}

/// Every `cargo xtask SUB [--FLAG ...]` the docs name is a subcommand
/// `cargo xtask` has, with flags it takes; every subcommand it has is named
/// in its usage line and in the docs.
#[test]
fn every_cargo_xtask_command_in_the_docs_exists_with_its_flags() {
    let main = xtask_fn("main");
    let subs: Vec<String> = main
        .match_indices("Some(\"")
        .filter_map(|(at, _)| main[at + 6..].split_once('"').map(|(s, _)| s.to_owned()))
        .collect();
    assert!(subs.len() >= 8, "{subs:?}");
    let usage = main
        .split_once("usage: cargo xtask <")
        .and_then(|(_, r)| r.split_once('>'))
        .map(|(u, _)| u.to_owned())
        .expect("a usage line");
    let xtask = read("xtask/src/main.rs");
    let mut named = Vec::new();
    for (doc, text) in docs() {
        for (at, _) in text.match_indices("cargo xtask ") {
            let rest = &text[at + "cargo xtask ".len()..];
            let end = rest.find(['`', '#', ')', '(']).unwrap_or(rest.len());
            let mut tokens = rest[..end].split_whitespace();
            let Some(sub) = tokens.next() else { continue };
            // `cargo xtask ci | setup | ...` in ARCHITECTURE.md.
            if sub == "|" {
                continue;
            }
            let sub = sub.trim_end_matches([',', '.', ';', ':']);
            assert!(
                subs.iter().any(|s| s == sub),
                "{doc}: `cargo xtask {sub}` does not exist (there are {subs:?})"
            );
            named.push(sub.to_owned());
            for flag in tokens.filter(|t| t.starts_with("--")) {
                assert!(
                    xtask.contains(&format!("\"{flag}\"")),
                    "{doc}: `cargo xtask {sub}` takes no {flag}"
                );
            }
        }
    }
    for sub in &subs {
        assert!(usage.contains(sub.as_str()), "the usage line omits {sub}");
        assert!(
            named.contains(sub),
            "no doc tells a user about `cargo xtask {sub}`"
        );
    }
}

/// `cargo xtask cost` builds the `cost` example in release mode and runs
/// it under callgrind. It must run the executable it just built: with
/// `CARGO_TARGET_DIR` set (as this project's own builds set it), a path
/// made up under the checkout's `target/` is another, older build of the
/// example, or none, and the figures printed would be for old code. So
/// xtask takes every example's executable from cargo's report, and never
/// makes up a path under `target/release` or `target/debug`.
#[test]
fn cargo_xtask_runs_the_example_cargo_built_wherever_the_target_directory_is() {
    let xtask = read("xtask/src/main.rs");
    for guessed in ["target/release", "target/debug"] {
        assert!(
            !xtask.contains(guessed),
            "xtask makes up a path under {guessed}: it ignores CARGO_TARGET_DIR"
        );
    }
    let cost = xtask_fn("cost");
    assert!(
        cost.contains("build_examples("),
        "`cargo xtask cost` takes the executable from cargo's report"
    );
    assert!(xtask_fn("build_examples").contains("\"executable\""));
}

/// Every `cargo bench -p PACKAGE [--bench NAME]` the docs give names a
/// package with benchmarks, and the bench it names exists
/// (`crates/DIR/benches/NAME.rs`).
#[test]
fn every_cargo_bench_command_in_the_docs_names_an_existing_bench() {
    let packages = packages();
    let mut seen = 0;
    for (doc, text) in docs() {
        for (at, _) in text.match_indices("cargo bench ") {
            let rest = &text[at..];
            let end = rest.find(['`', '#', ')']).unwrap_or(rest.len());
            let tokens: Vec<&str> = rest[..end].split_whitespace().collect();
            let flag = |name: &str| {
                tokens
                    .iter()
                    .position(|t| *t == name)
                    .and_then(|i| tokens.get(i + 1))
                    .map(|s| s.to_string())
            };
            let package = flag("-p").unwrap_or_else(|| panic!("{doc}: {}", &rest[..end]));
            let (dir, _) = packages
                .get(&package)
                .unwrap_or_else(|| panic!("{doc}: no package {package}"));
            let benches = stems(&format!("crates/{dir}/benches"), ".rs");
            assert!(!benches.is_empty(), "{doc}: {package} has no benches");
            if let Some(bench) = flag("--bench") {
                assert!(
                    benches.contains(&bench),
                    "{doc}: {package} has no bench {bench} ({benches:?})"
                );
            }
            seen += 1;
        }
    }
    // README's `cargo bench -p snakepit-protocol`, docs/sessions.md's
    // `--bench store`.
    assert!(seen >= 2, "{seen}");
}

/// ARCHITECTURE.md's entry points list `cargo xtask`'s subcommands; a
/// reader looking for how CI runs the examples finds no `examples` there.
#[test]
fn architectures_entry_points_list_every_cargo_xtask_subcommand() {
    let arch = read("ARCHITECTURE.md");
    let line = arch
        .lines()
        .find(|l| l.starts_with("- `cargo xtask ci |"))
        .expect("ARCHITECTURE.md lists the xtask subcommands");
    let main = xtask_fn("main");
    for (at, _) in main.match_indices("Some(\"") {
        let Some((sub, _)) = main[at + 6..].split_once('"') else {
            continue;
        };
        assert!(
            line.contains(&format!(" {sub}"))
                || line.contains(&format!("{sub} |"))
                || line.contains(&format!("{sub}`")),
            "ARCHITECTURE.md's list omits `cargo xtask {sub}`: {line}"
        );
    }
}
