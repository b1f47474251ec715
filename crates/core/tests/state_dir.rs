//! The state directory and the sweep against a hostile neighbour or a
//! forged record (issue 12, items 4 and 5): another user's directory in our
//! place, planted symlinks, FIFOs and huge files named like records, copies
//! of a live run's record, records from another PID namespace or boot, and
//! run ids nobody can guess.
//!
//! The tests run as root in CI containers; "another user" is uid 65534
//! (`nobody`), which root can give files to.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::json;
use snakepit_core::sweep::{sweep, SweepOptions, SweepReport, UnsafeStateDir};
use snakepit_core::Pool;

const NOBODY: u32 = 65534;

/// The sweep of `dir` on a thread of its own, so that a sweep that hangs
/// (on a FIFO, say) fails the test instead of hanging it. The bound is a
/// hang detector, not a speed assertion.
fn sweep_bounded(options: SweepOptions) -> std::io::Result<SweepReport> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(sweep(&options));
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the sweep returned (it hung on a record file)")
}

/// The error a sweep gives for an unsafe directory, checked to name the
/// directory and the problem.
fn assert_refused(dir: &Path, problem: &str) {
    let err =
        sweep(&SweepOptions::new().state_dir(dir)).expect_err("an unsafe directory is refused");
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
    let typed = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<UnsafeStateDir>())
        .unwrap_or_else(|| panic!("not an UnsafeStateDir: {err:?}"));
    assert_eq!(typed.dir, dir);
    let text = err.to_string();
    assert!(text.contains(&dir.display().to_string()), "{text}");
    assert!(text.contains(problem), "{text}");
}

/// A pool still starts with an unsafe state directory, and writes nothing
/// into it.
async fn a_pool_starts_and_leaves_it_alone(dir: &Path) {
    let pool = builder(TestWorker::new())
        .size(1)
        .name("neighbour")
        .configure(|c| c.state_dir = Some(dir.to_owned()))
        .start()
        .await
        .expect("the pool starts without its run record");
    assert_eq!(
        pool.execute("echo", json!({"x": 1})).await.unwrap()["echoed"],
        json!({"x": 1})
    );
    let written: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        written.is_empty(),
        "wrote into an unsafe directory: {written:?}"
    );
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_dir_owned_by_another_user_is_refused() {
    let base = temp_dir("owner");
    let dir = base.join("state");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
    assert_refused(&dir, "owned by uid 65534");
    a_pool_starts_and_leaves_it_alone(&dir).await;

    // Another user's symlink in our place, pointing at a directory of ours.
    let ours = base.join("ours");
    std::fs::create_dir(&ours).unwrap();
    let link = base.join("link");
    std::os::unix::fs::symlink(&ours, &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(NOBODY), Some(NOBODY)).unwrap();
    assert_refused(&link, "symbolic link owned by uid 65534");
    a_pool_starts_and_leaves_it_alone(&link).await;
    let _ = std::fs::remove_dir_all(base);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_dir_writable_by_others_is_refused() {
    let base = temp_dir("writable");
    for mode in [0o777, 0o770, 0o1777] {
        let dir = base.join(format!("state-{mode:o}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        assert_refused(&dir, "writable by other users");
        a_pool_starts_and_leaves_it_alone(&dir).await;
    }
    // A private directory inside a world-writable one without the sticky
    // bit: anybody can rename it away and put their own in its place.
    let open = base.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let dir = open.join("state");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_refused(
        &dir,
        &format!("{} can be changed by other users", open.display()),
    );
    a_pool_starts_and_leaves_it_alone(&dir).await;
    let _ = std::fs::remove_dir_all(base);
}

/// A directory the pool creates is private; a safe one is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_dir_the_pool_creates_is_private() {
    let base = temp_dir("create");
    let dir = base.join("a/b/state");
    let pool = builder(TestWorker::new())
        .size(1)
        .configure(|c| c.state_dir = Some(dir.clone()))
        .start()
        .await
        .unwrap();
    let meta = std::fs::metadata(&dir).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o700);
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "the run record"
    );
    let record = std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap();
    assert_eq!(record.metadata().unwrap().mode() & 0o777, 0o600);
    let report = sweep(&SweepOptions::new().state_dir(&dir)).unwrap();
    assert_eq!(report.active_runs, 1);
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(base);
}

/// The pool's record file in `dir`.
fn record_path(dir: &Path) -> PathBuf {
    let mut runs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "run"))
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs.pop().unwrap()
}

/// Kills one of the pool's workers and waits for its replacement: the
/// record is rewritten twice on the way (worker gone, worker added).
async fn replace_a_worker(pool: &Pool) {
    let before = pool.worker_pids();
    kill_9(before[0]);
    assert!(
        eventually(20, || {
            let now = pool.worker_pids();
            now.len() == before.len() && !now.contains(&before[0])
        })
        .await,
        "the killed worker was replaced"
    );
}

/// Record writes go through a temporary file with a random name created
/// with `O_EXCL`, then a rename: a symlink planted at the old, guessable
/// temporary path or at the record's own path is never written through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_writes_do_not_follow_a_planted_symlink() {
    let dir = temp_dir("plant");
    let outside = temp_dir("plant-target");
    let pool = builder(TestWorker::new())
        .size(1)
        .name("planted")
        .configure(|c| c.state_dir = Some(dir.clone()))
        .start()
        .await
        .unwrap();
    let record = record_path(&dir);
    let precious = outside.join("precious");
    std::fs::write(&precious, "root-only data\n").unwrap();
    // The temporary path a record write used to take: `<record>.tmp`.
    std::os::unix::fs::symlink(&precious, record.with_extension("tmp")).unwrap();
    replace_a_worker(&pool).await;
    assert_eq!(
        std::fs::read_to_string(&precious).unwrap(),
        "root-only data\n",
        "a record write went through the planted temporary-path symlink"
    );
    // And at the record's own path.
    std::fs::remove_file(&record).unwrap();
    std::os::unix::fs::symlink(&precious, &record).unwrap();
    replace_a_worker(&pool).await;
    assert_eq!(
        std::fs::read_to_string(&precious).unwrap(),
        "root-only data\n"
    );
    assert!(std::fs::symlink_metadata(&record).unwrap().is_file());
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(outside);
}

/// Record files that are not regular files, or are too big to be records,
/// are reported as unreadable without being followed or read whole: a
/// symlink (to a real record, and to `/dev/zero`), a FIFO, a huge file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_reads_take_only_small_regular_files() {
    let dir = temp_dir("reads");
    let outside = temp_dir("reads-target");
    let run_id = &a_run_id("0123456789abcdef");
    let leftover = a_leftover(run_id);
    let target = outside.join("record");
    std::fs::write(
        &target,
        forged_record(
            run_id,
            a_dead_pid(),
            Some((our_pid_namespace(), &our_boot_id())),
        ),
    )
    .unwrap();
    let link = dir.join("forged.1.x.run");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let report = sweep_bounded(SweepOptions::new().state_dir(&dir)).unwrap();
    assert_eq!(report.unreadable, vec![link.clone()], "{report:?}");
    assert_eq!(report.killed(), 0, "{report:?}");
    assert!(
        alive(leftover),
        "a record reached through a symlink was acted on"
    );
    std::fs::remove_file(&link).unwrap();

    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.run")).unwrap();
    #[allow(clippy::disallowed_methods)] // mkfifo, not a worker
    let made = std::process::Command::new("mkfifo")
        .arg(dir.join("fifo.run"))
        .status()
        .unwrap();
    assert!(made.success());
    let huge = std::fs::File::create(dir.join("huge.run")).unwrap();
    huge.set_len(512 << 20).unwrap(); // sparse: 512 MiB of zeros
    drop(huge);
    let peak_before = peak_rss_kib();
    let report = sweep_bounded(SweepOptions::new().state_dir(&dir)).unwrap();
    let grown_mib = (peak_rss_kib() - peak_before) / 1024;
    let mut unreadable: Vec<String> = report
        .unreadable
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    unreadable.sort();
    assert_eq!(
        unreadable,
        ["fifo.run", "huge.run", "zero.run"],
        "{report:?}"
    );
    assert!(
        grown_mib < 64,
        "reading the record files took {grown_mib} MiB"
    );
    // A pool starting over such a directory does not hang on its sweep either.
    let started = tokio::time::timeout(
        Duration::from_secs(60),
        builder(TestWorker::new())
            .size(1)
            .configure(|c| c.state_dir = Some(dir.clone()))
            .start(),
    )
    .await
    .expect("the pool's start-up sweep returned")
    .unwrap();
    started.shutdown().await.unwrap();
    kill_9(leftover);
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(outside);
}

/// The peak resident memory of this process (`VmHWM`), in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// A copy of a live pool's record that names a dead host pid, beside the
/// real one or alone in another directory, with or without the real host's
/// start time: the sweep kills none of the live pool's processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_record_with_a_dead_host_spares_the_live_pool() {
    let dir = temp_dir("copy");
    let elsewhere = temp_dir("copy-elsewhere");
    let pool = builder(TestWorker::new())
        .size(2)
        .name("victim")
        .configure(|c| c.state_dir = Some(dir.clone()))
        .start()
        .await
        .unwrap();
    let child = pool.execute("spawn_child", json!({})).await.unwrap()["child_pid"]
        .as_u64()
        .unwrap() as u32;
    let workers = pool.worker_pids();
    let original = std::fs::read_to_string(record_path(&dir)).unwrap();
    let host_line = original.lines().find(|l| l.starts_with("host ")).unwrap();
    let dead = a_dead_pid();
    let host_start = host_line.split(' ').nth(2).unwrap();
    let copies = [
        // Beside the real record, the host's start time kept.
        (
            &dir,
            original.replace(host_line, &format!("host {dead} {host_start}")),
        ),
        // Alone in another directory, the host's identity replaced whole.
        (
            &elsewhere,
            original.replace(host_line, &format!("host {dead} 1")),
        ),
    ];
    for (where_, text) in copies {
        let path = where_.join(format!("victim.{dead}.{}.run", pool.run_id()));
        std::fs::write(&path, text).unwrap();
        let report = sweep(&SweepOptions::new().state_dir(where_)).unwrap();
        assert_eq!(report.killed(), 0, "{}: {report:?}", where_.display());
        assert!(report.stale_runs.is_empty(), "{report:?}");
        assert!(path.exists(), "the copy of a live run's record is kept");
        for &p in workers.iter().chain([&child]) {
            assert!(alive(p), "pid {p} of the live pool was killed");
        }
        std::fs::remove_file(&path).unwrap();
    }
    assert_eq!(
        pool.execute("echo", json!({})).await.unwrap()["echoed"],
        json!({})
    );
    assert_eq!(pool.stats().restarts, 0);
    pool.shutdown().await.unwrap();
    kill_9(child);
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(elsewhere);
}

/// A record written in another PID namespace (a container sharing the
/// directory, alive: a process runs in it) or in an earlier boot is never
/// judged by its host pid: what carries its run id here is left alone. The
/// same record from this namespace and boot does get its leftover swept,
/// which shows the setup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_from_another_pid_namespace_or_boot_are_not_judged_by_pid() {
    let dir = temp_dir("pidns");
    let run_id = &a_run_id("fedcba9876543210");
    let leftover = a_leftover(run_id);
    let (dev, ino) = our_pid_namespace();
    let boot = our_boot_id();
    let record = dir.join(format!("forged.{}.{run_id}.run", a_dead_pid()));

    let (mut container, other) = another_pid_namespace();
    std::fs::write(
        &record,
        forged_record(run_id, a_dead_pid(), Some((other, &boot))),
    )
    .unwrap();
    let report = sweep(&SweepOptions::new().state_dir(&dir)).unwrap();
    let _ = container.kill();
    let _ = container.wait();
    assert_eq!(report.killed(), 0, "{report:?}");
    assert_eq!(report.foreign_runs, 1, "{report:?}");
    assert!(record.exists(), "another namespace's record is left alone");
    assert!(alive(leftover));

    let other_boot = "00000000-0000-4000-8000-000000000000";
    std::fs::write(
        &record,
        forged_record(run_id, a_dead_pid(), Some(((dev, ino), other_boot))),
    )
    .unwrap();
    let report = sweep(&SweepOptions::new().state_dir(&dir)).unwrap();
    assert_eq!(report.killed(), 0, "{report:?}");
    assert_eq!(report.stale_runs.len(), 1, "{report:?}");
    assert!(
        !record.exists(),
        "an earlier boot's record is gone for good"
    );
    assert!(alive(leftover));

    std::fs::write(
        &record,
        forged_record(run_id, a_dead_pid(), Some(((dev, ino), &boot))),
    )
    .unwrap();
    let report = sweep(&SweepOptions::new().state_dir(&dir)).unwrap();
    assert_eq!(report.killed(), 1, "{report:?}");
    assert!(eventually(5, || !alive(leftover)).await);
    let _ = std::fs::remove_dir_all(dir);
}

/// Run ids are 128 random bits in hex, different for every pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_ids_are_128_random_bits() {
    let mut ids = Vec::new();
    for _ in 0..3 {
        let dir = temp_dir("runid");
        let pool = builder(TestWorker::new())
            .size(1)
            .configure(|c| c.state_dir = Some(dir.clone()))
            .start()
            .await
            .unwrap();
        let id = pool.run_id().to_owned();
        assert_eq!(id.len(), 32, "{id}");
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
            "{id}"
        );
        let environ = std::fs::read(format!("/proc/{}/environ", pool.worker_pids()[0])).unwrap();
        let needle = format!("SNAKEPIT_RUN_ID={id}");
        assert!(
            environ.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()),
            "the worker carries its run id in its environment"
        );
        pool.shutdown().await.unwrap();
        let _ = std::fs::remove_dir_all(dir);
        ids.push(id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "{ids:?}");
    // No two ids share a long prefix, as pid- or clock-based ids would.
    assert!(ids.windows(2).all(|w| w[0][..8] != w[1][..8]), "{ids:?}");
}

/// A host killed between writing a record's temporary file and renaming it
/// leaves `.<record>.<random>.tmp` behind. The sweep removes those of
/// crashed runs: beside the crashed run's record, alone with a crashed
/// run's record in it, or alone and cut short when over a minute old. It
/// keeps those of a live pool (beside its record, or alone holding a live
/// run's record), a fresh cut-short one, and a symlink named like one
/// (whose target is untouched). A dry run reports the same and removes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_record_files_of_crashed_runs_are_swept_and_live_ones_kept() {
    let dir = temp_dir("tmp-records");
    let pool = builder(TestWorker::new())
        .size(1)
        .name("live")
        .configure(|c| c.state_dir = Some(dir.clone()))
        .start()
        .await
        .unwrap();
    let live_record = record_path(&dir);
    let live_name = live_record
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let live_text = std::fs::read_to_string(&live_record).unwrap();
    let here = Some((our_pid_namespace(), our_boot_id()));
    let here = here.as_ref().map(|(ns, b)| (*ns, b.as_str()));
    let dead = a_dead_pid();
    let (run_a, run_b) = (
        "a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0",
        "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0",
    );
    let tmp = |record: &str, random: &str| dir.join(format!(".{record}.{random}.tmp"));
    // A crashed run: its record and a temporary file of it.
    let crashed = format!("forged.{dead}.{run_a}.run");
    std::fs::write(dir.join(&crashed), forged_record(run_a, dead, here)).unwrap();
    let beside_crashed = tmp(&crashed, "0123456789abcdef");
    std::fs::write(&beside_crashed, "snakepit-run 1\ninst").unwrap();
    // A crashed run whose first write never got renamed.
    let alone_crashed = tmp(&format!("forged.{dead}.{run_b}.run"), "1111222233334444");
    std::fs::write(&alone_crashed, forged_record(run_b, dead, here)).unwrap();
    // Cut short, no record: one over a minute old, one fresh.
    let old_cut = tmp(
        &format!("forged.{dead}.{}.run", "c".repeat(32)),
        "aaaabbbbccccdddd",
    );
    std::fs::write(&old_cut, "snakepit-ru").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&old_cut)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(120))
        .unwrap();
    let fresh_cut = tmp(
        &format!("forged.{dead}.{}.run", "d".repeat(32)),
        "eeeeffff00001111",
    );
    std::fs::write(&fresh_cut, "snakepit-ru").unwrap();
    // The live pool's: beside its record, and alone with its text.
    let beside_live = tmp(&live_name, "fedcba9876543210");
    std::fs::write(&beside_live, &live_text).unwrap();
    let alone_live = tmp(&live_name.replace(".run", "x.run"), "2222333344445555");
    std::fs::write(&alone_live, &live_text).unwrap();
    // A symlink named like one, to a file that must survive.
    let target = temp_dir("tmp-records-target").join("precious");
    std::fs::write(&target, "keep me").unwrap();
    let link = tmp(
        &format!("forged.{dead}.{}.run", "e".repeat(32)),
        "9999888877776666",
    );
    std::os::unix::fs::symlink(&target, &link).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&target)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(120))
        .unwrap();

    let mut expected = vec![
        beside_crashed.clone(),
        alone_crashed.clone(),
        old_cut.clone(),
    ];
    expected.sort();
    let swept = |dry_run: bool| {
        let report = sweep_bounded(SweepOptions::new().state_dir(&dir).dry_run(dry_run)).unwrap();
        let mut removed = report.removed_temporary.clone();
        removed.sort();
        (report, removed)
    };
    let (report, removed) = swept(true);
    assert_eq!(removed, expected, "dry run: {report:?}");
    assert!(
        expected.iter().all(|p| p.exists()),
        "a dry run removed a file"
    );

    let (report, removed) = swept(false);
    assert_eq!(removed, expected, "{report:?}");
    for gone in &expected {
        assert!(!gone.exists(), "{} was kept", gone.display());
    }
    for kept in [&fresh_cut, &beside_live, &alone_live, &live_record] {
        assert!(kept.exists(), "{} was removed", kept.display());
    }
    assert!(
        std::fs::symlink_metadata(&link).is_ok(),
        "the symlink was removed"
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    assert_eq!(report.stale_runs.len(), 1, "{report:?}");
    assert_eq!(report.active_runs, 1, "{report:?}");
    pool.shutdown().await.unwrap();
}
