//! `snakepit.toml`: the worker to run and the pool's settings, which flags
//! override.
//!
//! ```toml
//! adapter = "python"          # python | node | ruby
//! script = "worker.py"        # relative to this file; omit for the generic worker
//! codec = "json"              # json | msgpack
//! timeout_ms = 30000          # each call's deadline
//!
//! [pool]                      # any field of snakepit_core::PoolConfig
//! pool_size = 4
//! queue_timeout_ms = 250
//! ```

use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use snakepit_core::PoolConfig;

use crate::args::{CodecArg, Lang};
use crate::ui::{Failure, Output};

/// The file's name in the current directory.
pub(crate) const FILE_NAME: &str = "snakepit.toml";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    adapter: Option<Lang>,
    script: Option<PathBuf>,
    codec: Option<CodecArg>,
    timeout_ms: Option<u64>,
    preload: Option<bool>,
    pool: Option<toml::Table>,
}

/// The file's `[pool]` table alone; the other keys were checked by [`Raw`].
#[derive(Deserialize)]
struct PoolOnly {
    pool: Option<PoolConfig>,
}

/// The settings read from the file (all optional).
#[derive(Debug, Default)]
pub(crate) struct FileConfig {
    pub(crate) adapter: Option<Lang>,
    /// Resolved against the file's directory.
    pub(crate) script: Option<PathBuf>,
    pub(crate) codec: Option<CodecArg>,
    pub(crate) timeout_ms: Option<u64>,
    /// Fork the workers from a template that loaded the script once.
    pub(crate) preload: bool,
    /// The pool's settings; defaults where the file says nothing.
    pub(crate) pool: PoolConfig,
    /// Whether the file set `pool.pool_size`.
    pub(crate) pool_size_set: bool,
}

/// Reads `explicit`, or `./snakepit.toml` when it exists; defaults otherwise.
pub(crate) fn load(explicit: Option<&Path>, out: &Output) -> Result<FileConfig, Failure> {
    let Some((path, text)) = read(explicit)? else {
        return Ok(FileConfig::default());
    };
    let config = parse(&text, path.parent().unwrap_or(Path::new(".")))
        .map_err(|e| Failure::usage(format!("{}: {e}", crate::ui::shown_path(&path))))?;
    out.verbose(format!("settings from {}", path.display()));
    Ok(config)
}

/// Only `state_dir` under `[pool]` from the settings file (`explicit`, or
/// `./snakepit.toml` when it exists), for `snakepit sweep`: a recovery tool
/// must not be stopped by a setting it does not use (an unknown adapter, a
/// misspelt key). The file must still be TOML.
pub(crate) fn load_state_dir(
    explicit: Option<&Path>,
    out: &Output,
) -> Result<Option<PathBuf>, Failure> {
    let Some((path, text)) = read(explicit)? else {
        return Ok(None);
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let dir = state_dir_of(&text, base)
        .map_err(|e| Failure::usage(format!("{}: {e}", crate::ui::shown_path(&path))))?;
    out.verbose(format!("state_dir from {}", path.display()));
    Ok(dir)
}

/// The settings file's path and text: `explicit`, or `./snakepit.toml`
/// when it exists (else `None`).
fn read(explicit: Option<&Path>) -> Result<Option<(PathBuf, String)>, Failure> {
    let path = match explicit {
        Some(p) => {
            if let Some(what) = not_a_file(p) {
                return Err(Failure::usage(format!("settings file {} {what}", crate::ui::shown_path(p)))
                .hint("check the path given by --config or SNAKEPIT_CONFIG; without either, ./snakepit.toml is read when it exists"));
            }
            p.to_path_buf()
        }
        None => {
            let p = PathBuf::from(FILE_NAME);
            match not_a_file(&p) {
                None => p,
                Some("not found") => return Ok(None),
                // Something is there under the name: ignoring it would run
                // with settings other than the ones the user meant.
                Some(what) => {
                    return Err(Failure::usage(format!("./{FILE_NAME} {what}"))
                        .hint(format!("remove or rename ./{FILE_NAME}, or give the settings file with --config")));
                }
            }
        }
    };
    // No more than a settings file can sensibly hold is read: a huge one (a
    // sparse file of zeros) would take memory and time without bound, and
    // its parse error would quote it whole.
    let cannot_read = |e: std::io::Error| {
        Failure::usage(format!("cannot read {}: {e}", crate::ui::shown_path(&path)))
    };
    let mut text = String::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_string(&mut text))
        .map_err(cannot_read)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(Failure::usage(format!(
            "{} is larger than {} MiB: not a settings file",
            crate::ui::shown_path(&path),
            MAX_FILE_BYTES >> 20
        ))
        .hint("give the right file with --config, or remove the stray one"));
    }
    Ok(Some((path, text)))
}

/// The most a settings file may hold: a few lines are all it needs.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// An empty `state_dir` is no directory: the pool would keep no run record.
/// Nor is one holding a NUL byte (`"\u0000"` in TOML), which no path can
/// hold: the pool would run without a record and the sweep fail.
fn check_state_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    if dir.to_string_lossy().trim().is_empty() {
        return Err(
            "state_dir under [pool] must not be empty (leave it out for the default directory)"
                .into(),
        );
    }
    if dir.as_os_str().as_bytes().contains(&0) {
        return Err(
            "state_dir under [pool] holds a NUL character (\\u0000), which no path can hold".into(),
        );
    }
    Ok(())
}

/// `state_dir` under `[pool]` in `text`, read alone; a relative one is
/// taken relative to `dir`, the file's directory, as [`parse`] takes it.
pub(crate) fn state_dir_of(text: &str, dir: &Path) -> Result<Option<PathBuf>, String> {
    let table: toml::Table =
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
    let Some(value) = table.get("pool").and_then(|p| p.get("state_dir")) else {
        return Ok(None);
    };
    match value.as_str() {
        Some(d) => {
            let state = PathBuf::from(d);
            check_state_dir(&state)?;
            Ok(Some(dir.join(state)))
        }
        None => Err(format!(
            "state_dir under [pool] must be a path (a string), not {}",
            value.type_str()
        )),
    }
}

/// Why `path` cannot be read as a file (the settings file, a worker
/// script): `not found`, `is a directory, not a file`, ...; `None` when it
/// is a regular file, or when it cannot be looked at (the caller's read
/// then says why).
pub(crate) fn not_a_file(path: &Path) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    let kind = match std::fs::metadata(path) {
        Ok(m) => m.file_type(),
        // A symbolic link whose target is missing is there all the same
        // (`ls` shows it): it names a file the user meant to be read.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Some(match std::fs::symlink_metadata(path) {
                Ok(link) if link.file_type().is_symlink() => "is a symbolic link to a missing file",
                _ => "not found",
            });
        }
        // Read it anyway: the error says why it cannot be.
        Err(_) => return None,
    };
    if kind.is_file() {
        None
    } else if kind.is_dir() {
        Some("is a directory, not a file")
    } else if kind.is_char_device() || kind.is_block_device() {
        Some("is a device, not a file")
    } else if kind.is_fifo() {
        Some("is a named pipe, not a file")
    } else if kind.is_socket() {
        Some("is a socket, not a file")
    } else {
        Some("is not a regular file")
    }
}

/// A number of workers, from the flag or key `what`: 1 to
/// [`MAX_POOL_SIZE`](snakepit_core::MAX_POOL_SIZE).
pub(crate) fn check_pool_size(n: usize, what: &str) -> Result<(), String> {
    let max = snakepit_core::MAX_POOL_SIZE;
    if n == 0 || n > max {
        return Err(format!("{what} must be between 1 and {max}"));
    }
    Ok(())
}

/// [`check_pool_size`] for a flag: a usage failure with a hint.
pub(crate) fn check_pool_size_flag(n: usize, flag: &str) -> Result<(), Failure> {
    check_pool_size(n, flag).map_err(|m| {
        Failure::usage(m).hint(format!(
            "give the number of worker processes, for example {flag} 2"
        ))
    })
}

/// Parses the file's text; `script` and `state_dir` are taken relative to
/// `dir`.
pub(crate) fn parse(text: &str, dir: &Path) -> Result<FileConfig, String> {
    let raw: Raw = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
    let pool_size_set = raw
        .pool
        .as_ref()
        .is_some_and(|t| t.contains_key("pool_size"));
    // Read `[pool]` from the text again, not from the table above: the
    // text's deserializer names the key and line of a wrong value.
    let mut pool = match raw.pool {
        Some(_) => toml::from_str::<PoolOnly>(text)
            .map_err(|e| e.to_string().trim_end().to_owned())?
            .pool
            .unwrap_or_default(),
        None => PoolConfig::default(),
    };
    // An empty path would name the file's own directory: no script.
    if raw
        .script
        .as_ref()
        .is_some_and(|s| s.as_os_str().is_empty())
    {
        return Err("script is empty: leave it out for the bundled generic worker".into());
    }
    // As their flags are refused (`--timeout 0`, `--pool-size 0`).
    if raw.timeout_ms == Some(0) {
        return Err("timeout_ms must be above 0 milliseconds".into());
    }
    if pool_size_set {
        check_pool_size(pool.pool_size, "pool_size under [pool]")?;
    }
    if let Some(state) = &pool.state_dir {
        check_state_dir(state)?;
    }
    // Relative to the file, as `script` is: the pools and `snakepit sweep`
    // then agree on the directory whatever the working directory of each.
    pool.state_dir = pool.state_dir.map(|state| dir.join(state));
    Ok(FileConfig {
        adapter: raw.adapter,
        script: raw.script.map(|s| dir.join(s)),
        codec: raw.codec,
        timeout_ms: raw.timeout_ms,
        preload: raw.preload.unwrap_or(false),
        pool,
        pool_size_set,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_worker_and_pool_settings() {
        let c = parse(
            "adapter = \"node\"\nscript = \"w.js\"\ncodec = \"msgpack\"\ntimeout_ms = 5\n[pool]\npool_size = 3\nqueue_timeout_ms = 250\n",
            Path::new("/srv"),
        )
        .unwrap();
        assert_eq!(c.adapter, Some(Lang::Node));
        assert_eq!(c.script, Some(PathBuf::from("/srv/w.js")));
        assert_eq!(c.codec, Some(CodecArg::Msgpack));
        assert_eq!(c.timeout_ms, Some(5));
        assert!(!c.preload);
        assert!(c.pool_size_set);
        assert_eq!(c.pool.pool_size, 3);
        assert_eq!(c.pool.queue_timeout.as_millis(), 250);
        assert_eq!(c.pool.max_queue_size, PoolConfig::default().max_queue_size);
    }

    #[test]
    fn reads_preload() {
        let c = parse("adapter = \"ruby\"\npreload = true\n", Path::new(".")).unwrap();
        assert!(c.preload);
        let e = parse("preload = \"yes\"\n", Path::new(".")).unwrap_err();
        assert!(e.contains("preload"), "{e}");
    }

    #[test]
    fn reads_the_pipelining_settings() {
        let c = parse(
            "[pool]\npipeline_depth = 0\npipeline_max_call_us = 250\n",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(c.pool.pipeline_depth, 0);
        assert_eq!(c.pool.pipeline_max_call.as_micros(), 250);
        let c = parse("", Path::new(".")).unwrap();
        assert_eq!(c.pool.pipeline_depth, PoolConfig::default().pipeline_depth);
    }

    #[test]
    fn names_the_key_whose_value_has_the_wrong_type() {
        let e = parse("[pool]\npool_size = \"two\"\n", Path::new(".")).unwrap_err();
        assert!(e.contains("pool_size") && e.contains("line 2"), "{e}");
        let e = parse("[pool]\nqueue_timeout_ms = -1\n", Path::new(".")).unwrap_err();
        assert!(e.contains("queue_timeout_ms"), "{e}");
    }

    #[test]
    fn a_zero_timeout_or_pool_size_is_refused_naming_the_key() {
        let e = parse("timeout_ms = 0\n", Path::new(".")).unwrap_err();
        assert!(e.contains("timeout_ms must be above 0"), "{e}");
        let e = parse("[pool]\npool_size = 0\n", Path::new(".")).unwrap_err();
        assert!(e.contains("pool_size under [pool]"), "{e}");
        assert!(parse("timeout_ms = 1\n[pool]\npool_size = 1\n", Path::new(".")).is_ok());
    }

    #[test]
    fn sweep_reads_state_dir_alone() {
        let text =
            "adapter = \"cobol\"\nmisspelt = 1\n[pool]\npool_sise = 3\nstate_dir = \"/run/x\"\n";
        assert!(parse(text, Path::new(".")).is_err());
        let here = Path::new("/srv/app");
        assert_eq!(
            state_dir_of(text, here).unwrap(),
            Some(PathBuf::from("/run/x"))
        );
        assert_eq!(state_dir_of("adapter = \"cobol\"\n", here).unwrap(), None);
        assert_eq!(
            state_dir_of("[pool]\nstate_dir = \"runs\"\n", here).unwrap(),
            Some(PathBuf::from("/srv/app/runs"))
        );
        let c = parse("[pool]\nstate_dir = \"runs\"\n", here).unwrap();
        assert_eq!(c.pool.state_dir, Some(PathBuf::from("/srv/app/runs")));
        for (bad, says) in [
            ("[pool]\nstate_dir = \"\"\n", "must not be empty"),
            ("[pool]\nstate_dir = 3\n", "must be a path"),
            ("[pool\n", "TOML"),
        ] {
            let e = state_dir_of(bad, here).unwrap_err();
            assert!(
                e.contains(says) || !e.is_empty() && says == "TOML",
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn an_empty_state_dir_is_refused_naming_the_key() {
        for text in ["[pool]\nstate_dir = \"\"\n", "[pool]\nstate_dir = \"  \"\n"] {
            let e = parse(text, Path::new(".")).unwrap_err();
            assert!(
                e.contains("state_dir under [pool] must not be empty"),
                "{e}"
            );
        }
        let c = parse("[pool]\nstate_dir = \"/run/x\"\n", Path::new(".")).unwrap();
        assert_eq!(c.pool.state_dir, Some(PathBuf::from("/run/x")));
    }

    #[test]
    fn a_settings_file_that_is_not_a_file_says_what_it_is() {
        assert_eq!(
            not_a_file(Path::new("/")),
            Some("is a directory, not a file")
        );
        assert_eq!(
            not_a_file(Path::new("/dev/null")),
            Some("is a device, not a file")
        );
        assert_eq!(
            not_a_file(Path::new("/no/such/snakepit.toml")),
            Some("not found")
        );
        let dir = std::env::temp_dir().join(format!("snakepit-dangling-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let link = dir.join("snakepit.toml");
        std::os::unix::fs::symlink("moved-away.toml", &link).unwrap();
        assert_eq!(
            not_a_file(&link),
            Some("is a symbolic link to a missing file")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn names_the_unknown_key() {
        let e = parse("[pool]\npool_sise = 3\n", Path::new(".")).unwrap_err();
        assert!(e.contains("pool_sise"), "{e}");
        let e = parse("adapter = \"perl\"\n", Path::new(".")).unwrap_err();
        assert!(e.contains("perl"), "{e}");
    }

    #[test]
    fn an_empty_file_is_the_defaults() {
        let c = parse("", Path::new(".")).unwrap();
        assert!(c.adapter.is_none() && !c.pool_size_set);
        assert_eq!(c.pool, PoolConfig::default());
    }
}
