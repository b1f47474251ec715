//! The bundled bridges' files, embedded at build time and written out once
//! per version to a cache directory, so that the adapters work from a
//! dependency's build as well as from this repository.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::Language;

macro_rules! bridge_files {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../bridges/", $path)))),*]
    };
}

static FILES: &[(&str, &str)] = bridge_files![
    "python/generic_worker.py",
    "python/snakepit_bridge/__init__.py",
    "python/snakepit_bridge/_async.py",
    "python/snakepit_bridge/_context.py",
    "python/snakepit_bridge/_handler.py",
    "python/snakepit_bridge/_ping.py",
    "python/snakepit_bridge/_preload.py",
    "python/snakepit_bridge/_server.py",
    "python/snakepit_bridge/_sync.py",
    "python/snakepit_bridge/_version.py",
    "python/snakepit_bridge/_wire.py",
    "python/snakepit_bridge/_worker.py",
    "python/snakepit_bridge/generic.py",
    "node/generic_worker.js",
    "node/esm_main.mjs",
    "node/esm_hooks.mjs",
    "node/package.json",
    "node/lib/index.js",
    "node/lib/packages.js",
    "node/lib/wire.js",
    "node/lib/worker.js",
    "node/lib/generic.js",
    "ruby/generic_worker.rb",
    "ruby/lib/snakepit_bridge.rb",
    "ruby/lib/snakepit_bridge/generic.rb",
    "ruby/lib/snakepit_bridge/preload.rb",
    "ruby/lib/snakepit_bridge/wire.rb",
    "ruby/lib/snakepit_bridge/worker.rb",
];

/// Where a file of the checked-in tree lands in the cache: Node's package
/// goes under a `snakepit-bridge/` directory so that `require` finds it by
/// name on `NODE_PATH`.
fn target(root: &Path, path: &str) -> PathBuf {
    match path.strip_prefix("node/") {
        Some(rest) => root.join("node/snakepit-bridge").join(rest),
        None => root.join(path),
    }
}

fn fingerprint() -> u64 {
    // FNV-1a over every file: a new bridge version gets a new directory.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (path, text) in FILES {
        for b in path.bytes().chain(text.bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// `$SNAKEPIT_BRIDGE_DIR` (a relative one taken from this process's
/// working directory, as a worker may run in another), else
/// `$XDG_CACHE_HOME/snakepit`, else `~/.cache/snakepit`, else (a process
/// with neither, such as a service) `$TMPDIR/snakepit-<uid>`, made private
/// to this user. An empty variable names no directory, and a relative
/// `XDG_CACHE_HOME` or `HOME` is ignored (as the XDG base directory
/// specification asks). Should the last one be unsafe (another user's, or
/// writable by others: another user could have planted bridge code there
/// that every worker would import), a new private directory of this
/// process's own instead, with a warning.
fn cache_base() -> std::io::Result<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("SNAKEPIT_BRIDGE_DIR") {
        return Ok(std::path::absolute(&dir).unwrap_or(dir));
    }
    let home = var("XDG_CACHE_HOME")
        .filter(|d| d.is_absolute())
        .or_else(|| {
            var("HOME")
                .filter(|h| h.is_absolute())
                .map(|h| h.join(".cache"))
        });
    if let Some(base) = home {
        return Ok(base.join("snakepit"));
    }
    snakepit_core::sweep::private_temp_dir().or_else(|e| {
        let dir = new_private_dir()?;
        // The problem alone: the state directory's own advice names its
        // variable, not this one.
        let problem = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<snakepit_core::sweep::UnsafeStateDir>())
            .map_or_else(
                || e.to_string(),
                |u| format!("{} is unsafe: {}", u.dir.display(), u.problem),
            );
        tracing::warn!(
            "{problem}; the bundled bridges are written to {} instead (set SNAKEPIT_BRIDGE_DIR, or HOME, to choose where)",
            dir.display()
        );
        Ok(dir)
    })
}

/// A directory of this process's own under `$TMPDIR`, made new (mode
/// 0700), so that nobody else can have put anything in it. Named after
/// this process (its process id and pid namespace), so that a later one
/// can tell it is gone ([`sweep_private_dirs`], run first).
fn new_private_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    sweep_private_dirs();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut last = None;
    for n in 0..100u32 {
        let dir = snakepit_core::sweep::temp_root().join(format!(
            "snakepit-bridges-{}-{}-{:08x}",
            pid_namespace(),
            std::process::id(),
            nanos.wrapping_add(n)
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no private directory")))
}

/// The inode number of this process's pid namespace (0 where it cannot be
/// read): process ids are told apart within one namespace only, and hosts
/// in containers of their own may share `$TMPDIR`.
fn pid_namespace() -> u64 {
    std::fs::read_link("/proc/self/ns/pid")
        .ok()
        .and_then(|link| {
            let link = link.to_str()?.strip_prefix("pid:[")?.strip_suffix(']')?;
            link.parse().ok()
        })
        .unwrap_or(0)
}

/// The pid namespace and process id in the name of a private directory
/// [`new_private_dir`] makes: `snakepit-bridges-<namespace>-<pid>-<8 hex
/// digits>`, or `snakepit-bridges-<pid>-<8 hex digits>` as earlier
/// versions named them (namespace 0: not known); `None` for any other name.
fn private_dir_owner(name: &str) -> Option<(u64, u32)> {
    let parts: Vec<&str> = name.strip_prefix("snakepit-bridges-")?.split('-').collect();
    let (namespace, pid, tail) = match parts[..] {
        [namespace, pid, tail] => (namespace, pid, tail),
        [pid, tail] => ("0", pid, tail),
        _ => return None,
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let hex = tail.len() == 8 && tail.bytes().all(|b| b.is_ascii_hexdigit());
    if !digits(namespace) || !digits(pid) || !hex {
        return None;
    }
    Some((namespace.parse().ok()?, pid.parse().ok()?))
}

/// Removes the private directories of hosts that are gone, which would
/// otherwise pile up in `$TMPDIR`, one per host that found its cache
/// directory unsafe: this user's directories (never a symbolic link) named
/// by [`new_private_dir`] whose process, in this pid namespace, no longer
/// runs. One of another namespace (another container sharing `$TMPDIR`),
/// whose process cannot be seen from here, or of an earlier version's name
/// (which does not say its namespace), goes when none of its trees was
/// marked used for [`LEFTOVER_AGE`]. Either is kept while a live process
/// names one of its trees in its environment (a worker that outlived its
/// host). Errors are ignored: the next host tries again.
fn sweep_private_dirs() {
    use std::os::unix::fs::MetadataExt;
    let Some(uid) = effective_uid() else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(snakepit_core::sweep::temp_root()) else {
        return;
    };
    let namespace = pid_namespace();
    let now = std::time::SystemTime::now();
    let recent = |meta: std::fs::Metadata| {
        meta.modified()
            .ok()
            .is_none_or(|t| now.duration_since(t).map_or(true, |d| d <= LEFTOVER_AGE))
    };
    for entry in entries.flatten() {
        let Some((owner_namespace, pid)) = entry.file_name().to_str().and_then(private_dir_owner)
        else {
            continue;
        };
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_dir() || meta.uid() != uid {
            continue;
        }
        let gone = if namespace != 0 && owner_namespace == namespace {
            !Path::new("/proc").join(pid.to_string()).exists()
        } else {
            let trees = std::fs::read_dir(&path).into_iter().flatten().flatten();
            let marked = trees.into_iter().any(|tree| {
                let tree = tree.path();
                std::fs::symlink_metadata(tree.join(".complete"))
                    .or_else(|_| std::fs::symlink_metadata(&tree))
                    .is_ok_and(recent)
            });
            !marked && !recent(meta)
        };
        let used = || {
            std::fs::read_dir(&path)
                .into_iter()
                .flatten()
                .flatten()
                .any(|tree| in_use(&tree.path()))
        };
        if gone && !used() {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// Whether the tree at `root` holds every bundled file as embedded, and
/// nothing else (but the bytecode Python writes beside its sources), in a
/// directory of this user's that nobody else can enter: a tree changed
/// since it was written (edited, truncated, half-removed, a module added
/// that would shadow another, a file made a symbolic link) is written
/// again rather than run, and so is one that others could change after
/// this check (open to them, in a `SNAKEPIT_BRIDGE_DIR` such as `/tmp`);
/// [`root`] writes elsewhere instead of over another user's.
fn intact(root: &Path) -> bool {
    private(root)
        && root.join(".complete").exists()
        && FILES.iter().all(|(path, text)| {
            std::fs::read(target(root, path)).is_ok_and(|have| have == text.as_bytes())
        })
        && nothing_else(root)
}

/// Why the cache directory `base` is unsafe to keep the bridges in, or
/// `None` when it is safe: it, or a directory above it, belongs to another
/// user than this process's and root, or may be written by group or others
/// without the sticky bit (as `/tmp` has). Such a user may rename the tree
/// that this process checked and put one of their own in its place, which
/// every later worker would import. `base` is made first if need be (a
/// failure is left to the write to report); it is judged with its symbolic
/// links resolved.
fn unsafe_base(base: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let Some(uid) = effective_uid() else {
        return Some(format!(
            "{} cannot be checked for the bundled bridges: this process's user id is unknown \
             (no /proc/self/status, and no file could be made to tell it)",
            base.display()
        ));
    };
    let _ = std::fs::create_dir_all(base);
    let real = std::fs::canonicalize(base).ok()?;
    real.ancestors().find_map(|dir| {
        let meta = std::fs::metadata(dir).ok()?;
        let mode = meta.mode() & 0o7777;
        if meta.uid() != uid && meta.uid() != 0 {
            Some(format!(
                "{} is unsafe for the bundled bridges: {} belongs to user {}",
                base.display(),
                dir.display(),
                meta.uid()
            ))
        } else if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            Some(format!(
                "{} is unsafe for the bundled bridges: {} may be written by other users \
                 (mode {mode:o}, without the sticky bit)",
                base.display(),
                dir.display()
            ))
        } else {
            None
        }
    })
}

/// Whether `dir` is a directory itself (not a symbolic link to one) that
/// belongs to this process's user and that no group or other user may
/// enter, read or write: as [`new_dir_beside`] makes the trees it writes.
fn private(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(dir).is_ok_and(|meta| {
        meta.is_dir()
            && meta.mode() & 0o077 == 0
            && effective_uid().is_none_or(|uid| uid == meta.uid())
    })
}

/// Whether `path` exists and belongs to another user than this process's
/// (a symbolic link is judged by its own owner, not its target's).
fn anothers(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .is_ok_and(|meta| effective_uid().is_some_and(|uid| uid != meta.uid()))
}

/// This process's effective user id, from `/proc/self/status` (its second
/// `Uid:` field), else the owner of a file it creates ([`uid_by_probe`]);
/// `None` where neither can be had. Without it the ownership checks above
/// cannot be made: the cache directory is then not trusted.
fn effective_uid() -> Option<u32> {
    let from_proc = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        });
    from_proc.or_else(uid_by_probe)
}

/// The owner of a file this process creates (and removes) in the
/// temporary directory: its effective user id where `/proc` is not there.
fn uid_by_probe() -> Option<u32> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let probe =
        std::env::temp_dir().join(format!(".snakepit-uid-{}-{nanos:x}", std::process::id()));
    let uid = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&probe)
        .and_then(|f| f.metadata())
        .map(|m| m.uid());
    let _ = std::fs::remove_file(&probe);
    uid.ok()
}

/// Whether every file under `root` is a bundled one, the `.complete` mark,
/// in a `__pycache__` directory, or in `init_delay/` (the scripts
/// `Bridge::with_init` writes there), and none is a symbolic link.
fn nothing_else(root: &Path) -> bool {
    let expected: std::collections::HashSet<PathBuf> = FILES
        .iter()
        .map(|(path, _)| target(root, path))
        .chain([root.join(".complete")])
        .collect();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return false;
        };
        for entry in entries {
            let Ok(entry) = entry else { return false };
            let Ok(kind) = entry.file_type() else {
                return false;
            };
            let path = entry.path();
            if kind.is_symlink() {
                // Not written here: its target may be anyone's.
                return false;
            }
            if kind.is_dir() {
                let ours = entry.file_name() == "__pycache__"
                    || (dir == root && entry.file_name() == "init_delay");
                if !ours {
                    dirs.push(path);
                }
            } else if !expected.contains(&path) {
                return false;
            }
        }
    }
    true
}

/// Whether the tree checked whole earlier is still there: its mark and
/// each language's entry script (a cleaner of old files in `$TMPDIR`, or
/// `rm -rf ~/.cache`, may have removed it since).
fn still_there(root: &Path) -> bool {
    root.join(".complete").exists()
        && [
            "python/generic_worker.py",
            "node/generic_worker.js",
            "ruby/lib/snakepit_bridge.rb",
        ]
        .iter()
        .all(|path| target(root, path).exists())
}

/// The directory holding the bridges, written on first use. Checked whole
/// once per process; after that, only that it is still there, and written
/// again if not (unless its directory has become one that others may
/// change, see [`unsafe_base`]: an error then). One thread of the process
/// writes it at a time. Each call marks the tree as used ([`mark_used`]);
/// the first also removes what is certainly dead beside it ([`sweep`]).
pub(crate) fn root() -> std::io::Result<&'static Path> {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    static WRITING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    if let Some(root) = ROOT.get() {
        // Marked before the check: see [`sweep`].
        mark_used(root);
        if still_there(root) {
            return Ok(root);
        }
    }
    let _writing = WRITING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let root = match ROOT.get() {
        Some(root) if still_there(root) => return Ok(root),
        Some(root) => {
            // The tree went, and its directory with it perhaps (a cleaner
            // of old files in `$TMPDIR`): whoever made that directory again
            // may be another user. The workers' module path names this
            // place, so there is no other to write to.
            if let Some(problem) = root.parent().and_then(unsafe_base) {
                return Err(std::io::Error::other(format!(
                    "{problem}; the bundled bridges, gone from there, are not written \
                     there again (set SNAKEPIT_BRIDGE_DIR to a directory that only you \
                     can change, and restart this program)"
                )));
            }
            root.clone()
        }
        None => {
            let name = format!("bridges-{:016x}", fingerprint());
            let base = cache_base()?;
            let root = base.join(&name);
            if let Some(problem) = unsafe_base(&base) {
                // Whoever may rename entries there could swap the tree for
                // one of their own after it was checked, between two
                // worker starts.
                let dir = new_private_dir()?;
                tracing::warn!(
                    "{problem}; the bundled bridges are written to {} instead \
                     (set SNAKEPIT_BRIDGE_DIR to a directory that only you can change)",
                    dir.display()
                );
                dir.join(name)
            } else if anothers(&root) {
                // Neither used (its owner could change it at any time) nor
                // replaced (it is not ours to remove).
                let dir = new_private_dir()?;
                tracing::warn!(
                    "{} belongs to another user; the bundled bridges are written to {} instead \
                     (set SNAKEPIT_BRIDGE_DIR to a directory of your own)",
                    root.display(),
                    dir.display()
                );
                dir.join(name)
            } else {
                root
            }
        }
    };
    mark_used(&root);
    if !intact(&root) {
        write_afresh(&root)?;
    }
    if ROOT.get().is_none() {
        // Once per process, when the tree is first checked whole.
        sweep(&root);
    }
    Ok(ROOT.get_or_init(|| root))
}

/// How long a tree of another version of the bridges may go unused (no
/// host of that version marking it, see [`mark_used`]) before a host
/// removes it.
const UNUSED_TREE_AGE: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 60 * 60);

/// How old a directory left by a write (`.tmp`) or a replacement (`.old`)
/// must be before a host removes it: a write takes well under a second, so
/// one a day old belongs to a host that crashed or was killed, whatever
/// its process id (which may since belong to another process, or to a
/// process in another container sharing the directory).
const LEFTOVER_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

/// Records that a host of this version uses the tree at `root`: sets the
/// modification time of its `.complete` mark to now (a tree just written
/// has a new mark). Done before the tree is checked, when it is first
/// checked and before each worker start, so that a tree in use never
/// looks unused to [`sweep`]. Only a plain file in a [`private`] tree is
/// marked (never the target of a symbolic link, nor a file in a tree that
/// others could change). A failure only leaves the old time.
fn mark_used(root: &Path) {
    let mark = root.join(".complete");
    let plain = std::fs::symlink_metadata(&mark).is_ok_and(|m| m.is_file());
    if plain && private(root) {
        if let Ok(file) = std::fs::File::open(&mark) {
            let _ = file.set_modified(std::time::SystemTime::now());
        }
    }
}

/// What an entry of the cache directory is, judged by its name alone.
#[derive(Debug, PartialEq, Eq)]
enum CacheEntry {
    /// `bridges-<16 hex digits>`: the tree of one version.
    Tree,
    /// `bridges-<16 hex digits>.tmp<pid>-<n>` or `.old<pid>-<n>`: a tree
    /// being written, or a changed one moved aside to be removed.
    Leftover,
}

/// The kind of cache entry `name` names, or `None` for any other name
/// (never removed).
fn cache_entry(name: &str) -> Option<CacheEntry> {
    let rest = name.strip_prefix("bridges-")?;
    let hex = rest.get(..16)?;
    if !hex
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let tail = &rest[16..];
    if tail.is_empty() {
        return Some(CacheEntry::Tree);
    }
    let numbers = tail
        .strip_prefix(".tmp")
        .or_else(|| tail.strip_prefix(".old"))?;
    let (pid, n) = numbers.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(pid) && digits(n)).then_some(CacheEntry::Leftover)
}

/// Whether a live process names `tree` in its environment: the workers of
/// a host that runs from a tree carry it on their module path
/// (`PYTHONPATH`, `NODE_PATH`, `RUBYLIB`), so a tree whose mark is old is
/// still kept while a worker started from it runs (a host that has started
/// no worker for a week, whose workers may import more of the bridge
/// later). A process may name the tree by another path than this host's
/// (through a symbolic link, with `..` in it, relative to its own working
/// directory: two hosts may spell the cache directory differently), so a
/// path in its environment that holds a component named as the tree counts
/// when the path up to that component is the same directory. (A link to a
/// directory inside the tree, under another name, is not recognised.) Only this user's processes
/// can be read, and only they can use a tree of this user's (mode 0700).
/// When `/proc` cannot be read, every tree counts as in use.
fn in_use(tree: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let needle = tree.as_os_str().as_bytes();
    let Some(name) = tree.file_name().map(OsStrExt::as_bytes) else {
        return true;
    };
    // The directory itself, to compare other paths to.
    let Ok(meta) = std::fs::metadata(tree) else {
        return true;
    };
    let same = |path: &Path| {
        std::fs::metadata(path).is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino())
    };
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return true;
    };
    processes.flatten().any(|p| {
        if !p.file_name().as_bytes().iter().all(u8::is_ascii_digit) {
            return false;
        }
        let Ok(env) = std::fs::read(p.path().join("environ")) else {
            return false;
        };
        if contains(&env, needle) {
            return true;
        }
        if !contains(&env, name) {
            return false;
        }
        // A relative path is the process's own: taken from its directory.
        let cwd = p.path().join("cwd");
        env.split(|b| *b == 0)
            .filter_map(|entry| {
                entry
                    .iter()
                    .position(|b| *b == b'=')
                    .map(|i| &entry[i + 1..])
            })
            .flat_map(|value| value.split(|b| *b == b':'))
            .filter(|piece| contains(piece, name))
            .any(|piece| {
                let path = cwd.join(std::ffi::OsStr::from_bytes(piece));
                path.ancestors()
                    .filter(|a| a.file_name().is_some_and(|n| n.as_bytes() == name))
                    .any(same)
            })
    })
}

/// Whether `needle` occurs in `bytes`.
fn contains(bytes: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || bytes.windows(needle.len()).any(|w| w == needle)
}

/// Removes from the directory holding `root` what is certainly dead: a
/// leftover of a write older than [`LEFTOVER_AGE`] (by its own
/// modification time), and the tree of another version whose `.complete`
/// mark (or, without one, the tree itself) was not modified for
/// [`UNUSED_TREE_AGE`]. Only directories (not symbolic links, which are
/// never followed) of this process's user, with names of the cache's own
/// patterns, are removed. A tree is first renamed aside whole, so that a
/// host of its version sees the tree or none (and then writes it again),
/// never part of one; its mark is read again after the rename, and a tree
/// that a host marked meanwhile is renamed back (a host marks its tree
/// before it checks that the tree is there, so it either marked it before
/// this second reading or finds it gone and writes it again). Errors are
/// ignored: the next host tries again.
fn sweep(root: &Path) {
    use std::os::unix::fs::MetadataExt;
    let (Some(base), Some(own), Some(uid)) = (root.parent(), root.file_name(), effective_uid())
    else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let now = std::time::SystemTime::now();
    let older_than = |meta: &std::fs::Metadata, age: std::time::Duration| {
        meta.modified()
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|d| d > age)
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name == own {
            continue;
        }
        let Some(kind) = name.to_str().and_then(cache_entry) else {
            continue;
        };
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_dir() || meta.uid() != uid {
            continue;
        }
        match kind {
            CacheEntry::Leftover => {
                if older_than(&meta, LEFTOVER_AGE) {
                    let _ = std::fs::remove_dir_all(&path);
                }
            }
            CacheEntry::Tree => {
                let unused = |tree: &Path| {
                    std::fs::symlink_metadata(tree.join(".complete"))
                        .ok()
                        .filter(|m| m.is_file())
                        .or_else(|| std::fs::symlink_metadata(tree).ok())
                        .is_some_and(|m| older_than(&m, UNUSED_TREE_AGE))
                };
                if !unused(&path) || in_use(&path) {
                    continue;
                }
                let Ok(aside) = new_name_beside(&path, "old") else {
                    continue;
                };
                if std::fs::rename(&path, &aside).is_err() {
                    continue;
                }
                // Renamed back only where nothing took its name since (a
                // directory is renamed over an empty directory only, and
                // a tree is never empty).
                if unused(&aside) || std::fs::rename(&aside, &path).is_err() {
                    let _ = std::fs::remove_dir_all(&aside);
                }
            }
        }
    }
}

/// How many times a host writes the tree before it gives up: each try can
/// be undone only by another host replacing the same changed tree at the
/// same moment, which then leaves a whole tree for the next try to find.
const WRITE_TRIES: u32 = 8;

/// Writes the tree at `root` afresh: to a directory of this write's own,
/// renamed into place, so that other hosts never see half a tree. A tree
/// that is there but changed is first moved aside whole (one rename) and
/// then removed, never removed in place: a host that checks it meanwhile
/// sees the old tree, no tree, or a whole new one, never a tree being
/// taken apart (which it would take for a changed one and remove, new
/// files and all). Several hosts replacing one changed tree at once can
/// still move each other's new tree aside; each then tries again and finds
/// the tree another one put in place.
fn write_afresh(root: &Path) -> std::io::Result<()> {
    let cannot = |e: std::io::Error| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot write the bundled bridges to {}: {e}",
                root.display()
            ),
        )
    };
    for _ in 0..WRITE_TRIES {
        let tmp = new_dir_beside(root, "tmp").map_err(cannot)?;
        write_tree(&tmp).map_err(|e| {
            let _ = std::fs::remove_dir_all(&tmp);
            cannot(e)
        })?;
        if std::fs::symlink_metadata(root).is_ok() && !intact(root) {
            // Changed since it was written: replaced whole. A name of its
            // own, so that two hosts doing this never remove the same one.
            if let Ok(aside) = new_name_beside(root, "old") {
                if std::fs::rename(root, &aside).is_ok() {
                    let _ =
                        std::fs::remove_dir_all(&aside).or_else(|_| std::fs::remove_file(&aside));
                }
            }
        }
        if std::fs::rename(&tmp, root).is_err() {
            let _ = std::fs::remove_dir_all(&tmp); // another host won the race
        }
        if intact(root) {
            return Ok(());
        }
        if std::fs::symlink_metadata(root).is_ok() && !private(root) {
            // Not one of the trees this function writes: trying again
            // would not change it.
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let why = if private(root) || std::fs::symlink_metadata(root).is_err() {
        ""
    } else {
        " (what is there is not a private directory of this user's: \
         another user's, a symbolic link, or open to others)"
    };
    Err(std::io::Error::other(format!(
        "cannot write the bundled bridges to {}{why}",
        root.display()
    )))
}

/// A name next to `root` that no other write uses, for `kind` (`tmp`, a
/// tree being written; `old`, a changed tree moved aside): named after
/// this process and a count. Whatever a crashed process of the same pid
/// (or another container's) left under that name is removed first.
fn new_name_beside(root: &Path, kind: &str) -> std::io::Result<PathBuf> {
    static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = root.with_extension(format!("{kind}{}-{n}", std::process::id()));
    if std::fs::symlink_metadata(&name).is_ok() {
        std::fs::remove_dir_all(&name).or_else(|_| std::fs::remove_file(&name))?;
    }
    Ok(name)
}

/// A new, empty directory next to `root` (mode 0700) that no other write
/// uses (see [`new_name_beside`]).
fn new_dir_beside(root: &Path, kind: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = root.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut last = None;
    for _ in 0..100 {
        let Ok(tmp) = new_name_beside(root, kind) else {
            continue;
        };
        match std::fs::DirBuilder::new().mode(0o700).create(&tmp) {
            Ok(()) => return Ok(tmp),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no directory for the bridges")))
}

/// Every bundled file under `dir`, then the `.complete` mark.
fn write_tree(dir: &Path) -> std::io::Result<()> {
    for (path, text) in FILES {
        let dest = target(dir, path);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(dest, text)?;
    }
    std::fs::write(dir.join(".complete"), b"")
}

/// The generic worker script of `lang`.
pub(crate) fn generic_worker(lang: Language) -> std::io::Result<PathBuf> {
    let root = root()?;
    Ok(match lang {
        Language::Python => root.join("python/generic_worker.py"),
        Language::Node => root.join("node/snakepit-bridge/generic_worker.js"),
        Language::Ruby => root.join("ruby/generic_worker.rb"),
    })
}

/// The launcher of a Node worker that Node runs as an ES module (`.mjs`,
/// and `.js` as `Bridge::is_es_module` tells): it makes `import ... from
/// 'snakepit-bridge'` find the bundled bridge, which `NODE_PATH` does for
/// `require` only.
pub(crate) fn node_esm_main() -> std::io::Result<PathBuf> {
    Ok(root()?.join("node/snakepit-bridge/esm_main.mjs"))
}

/// The directory to put on the language's module path.
pub(crate) fn module_dir(lang: Language) -> std::io::Result<PathBuf> {
    let root = root()?;
    Ok(match lang {
        Language::Python => root.join("python"),
        Language::Node => root.join("node"),
        Language::Ruby => root.join("ruby/lib"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where `/proc` is not there, the owner of a file the process makes
    /// tells its user id: the same as `/proc/self/status` says here.
    #[test]
    fn a_probe_file_tells_the_same_user_id_as_proc() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap();
        let from_proc: u32 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert_eq!(uid_by_probe(), Some(from_proc));
        assert_eq!(effective_uid(), Some(from_proc));
    }
}
