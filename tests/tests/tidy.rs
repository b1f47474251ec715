//! Tidy checks over the workspace's own sources, as rust-analyzer keeps
//! them: every Rust source file opens with a module doc (`//!`) saying what
//! it holds, and every repository file a doc comment names exists.

use std::path::{Path, PathBuf};

use snakepit_tests::workspace_root;

fn rust_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The library and binary sources (tests, examples and benches have their
/// own first-line comments).
fn sources() -> Vec<PathBuf> {
    let root = workspace_root();
    let mut files = Vec::new();
    let crates = std::fs::read_dir(root.join("crates")).expect("crates/");
    for krate in crates.flatten() {
        rust_sources(&krate.path().join("src"), &mut files);
    }
    rust_sources(&root.join("xtask/src"), &mut files);
    rust_sources(&root.join("tests/src"), &mut files);
    files.sort();
    files
}

#[test]
fn every_source_file_has_a_module_doc() {
    let missing: Vec<_> = sources()
        .into_iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            !text.trim_start().starts_with("//!")
        })
        .collect();
    assert!(
        missing.is_empty(),
        "these files lack a `//!` module doc saying what they hold: {missing:#?}"
    );
}

#[test]
fn doc_comments_name_only_files_that_exist() {
    let root = workspace_root();
    let mut dangling = Vec::new();
    for f in sources() {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for line in text.lines() {
            let line = line.trim_start();
            if !(line.starts_with("//!") || line.starts_with("///")) {
                continue;
            }
            // Paths written as code, `docs/x.md` or `crates/a/b.rs`.
            for quoted in line.split('`').skip(1).step_by(2) {
                let rooted = ["docs/", "crates/", "bridges/", "tests/", "xtask/"]
                    .iter()
                    .any(|p| quoted.starts_with(p));
                let file_like = quoted.ends_with(".md")
                    || quoted.ends_with(".rs")
                    || quoted.ends_with(".py")
                    || quoted.ends_with(".json");
                if rooted
                    && file_like
                    && !quoted.contains(['*', '<', ' '])
                    && !root.join(quoted).exists()
                {
                    dangling.push(format!("{}: {quoted}", f.display()));
                }
            }
        }
    }
    assert!(
        dangling.is_empty(),
        "doc comments name files that do not exist: {dangling:#?}"
    );
}
