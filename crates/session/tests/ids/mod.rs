//! Hostile and unusual session ids, and one script of every store
//! operation on an id with the outcome the docs give: shared by the
//! session crate's `outside_session_ids.rs` (memory, Redis) and the
//! cluster crate's `outside_kv_session_ids.rs` (NATS KV), so that every
//! store is held to the same table.
#![allow(dead_code)]

use std::time::Duration;

use serde_json::json;
use snakepit_session::{Error, SessionStore};

/// Ids a user would hand a store: from forms, URLs, file systems, other
/// systems' keys, and the stores' own syntax. Every one is valid (1 to 512
/// bytes).
pub(crate) fn hostile_ids() -> Vec<String> {
    let mut ids: Vec<String> = [
        "a",
        "A",
        "\0",
        "a\0b",
        "\n",
        "a\r\nb",
        " ",
        "a b ",
        "\t",
        "ü",
        "u\u{308}", // "ü" decomposed: another id
        "🐍",
        "/",
        "..",
        ".",
        "../..",
        "/home/user/../.ssh/id_rsa",
        "C:\\Users\\x",
        "\\",
        ">",
        "*",
        "?",
        "[",
        "]",
        "[a-z]*",
        ":",
        "::",
        "snakepit:",
        "snakepit:s:a",
        "s:a",
        "idx",
        "stats",
        "g",
        "user@example.com",
        "{123e4567-e89b-12d3-a456-426614174000}",
        "$KV.snakepit_sessions.>",
        "s.61",
        "%00",
        "a\u{7f}\u{1b}[31m",
        // NATS subject syntax and the KV store's own key shapes (`s.61` is
        // the key of `a`).
        "a.*",
        "a.>",
        "_INBOX.x",
        "s.",
        "g.61",
        "61",
        "%2e",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    ids.push("é".repeat(256)); // 512 bytes, 256 characters
    ids.push("x".repeat(512));
    ids
}

/// Ids no store may take: empty, or over 512 bytes (counted in bytes, not
/// characters: 171 three-byte characters are 513 bytes), up to 1 MiB.
pub(crate) fn invalid_ids() -> Vec<String> {
    vec![
        String::new(),
        "x".repeat(513),
        "€".repeat(171),
        "x".repeat(1 << 20),
    ]
}

/// An outcome as a short text: `ok ...`, `gone` (`NotFound` or `Expired`,
/// which the docs let a store pick between), or the error's variant.
pub(crate) fn outcome<T: std::fmt::Debug>(r: Result<T, Error>) -> String {
    match r {
        Ok(v) => {
            let text = format!("ok {v:?}");
            // 1 MiB ids echoed back are not worth printing.
            text.chars().take(80).collect()
        }
        Err(e) if e.is_gone() => "gone".into(),
        Err(Error::Invalid { what, .. }) => format!("invalid {what}"),
        Err(Error::AlreadyExists(_)) => "already exists".into(),
        Err(Error::ProgramNotFound { session_id, .. }) => {
            format!("program not found (in a session: {})", session_id.is_some())
        }
        Err(e) => format!("other {e}"),
    }
}

/// One run of every operation of the store on `id`, each outcome named.
/// Ends with the id deleted, then used again: the new session has none of
/// the old one's data or programs.
pub(crate) async fn script<S: SessionStore>(store: &S, id: &str) -> Vec<(&'static str, String)> {
    let long_key = "k".repeat(513);
    let mut out: Vec<(&'static str, String)> = Vec::new();
    macro_rules! step {
        ($name:literal, $e:expr) => {
            out.push(($name, outcome($e)))
        };
    }
    step!("session_exists before", store.session_exists(id).await);
    step!("get before", store.get(id, "k").await);
    step!(
        "create ttl Duration::MAX",
        store
            .create_session(id, Some(Duration::MAX))
            .await
            .map(drop)
    );
    step!(
        "create ttl 0",
        store
            .create_session(id, Some(Duration::ZERO))
            .await
            .map(drop)
    );
    out.push((
        "create 60 s",
        outcome(
            store
                .create_session(id, Some(Duration::from_secs(60)))
                .await
                .map(|s| (s.id == id, s.ttl_ms, s.data.len())),
        ),
    ));
    step!(
        "create again",
        store.create_session(id, None).await.map(drop)
    );
    step!("ensure", store.ensure_session(id).await);
    step!("set", store.set(id, "k", json!({ "id": id })).await);
    out.push((
        "get",
        outcome(
            store
                .get(id, "k")
                .await
                .map(|v| v == Some(json!({ "id": id }))),
        ),
    ));
    step!("set empty key", store.set(id, "", json!(1)).await);
    step!("set 513-byte key", store.set(id, &long_key, json!(1)).await);
    step!(
        "store_program",
        store.store_program(id, "p", json!([id])).await
    );
    out.push((
        "get_program",
        outcome(store.get_program(id, "p").await.map(|v| v == json!([id]))),
    ));
    step!(
        "get_program missing",
        store.get_program(id, "nope").await.map(drop)
    );
    step!(
        "get_program empty id",
        store.get_program(id, "").await.map(drop)
    );
    step!(
        "get_program 513-byte id",
        store.get_program(id, &long_key).await.map(drop)
    );
    step!(
        "store_program empty id",
        store.store_program(id, "", json!(1)).await
    );
    out.push((
        "update",
        outcome(
            store
                .update_session(id, |s| {
                    s.metadata.insert("m".into(), json!(1));
                })
                .await
                .map(|s| (s.id == id, s.metadata.len())),
        ),
    ));
    out.push((
        "update ttl u64::MAX",
        outcome(
            store
                .update_session(id, |s| s.ttl_ms = u64::MAX)
                .await
                .map(drop),
        ),
    ));
    out.push((
        "get_session",
        outcome(store.get_session(id).await.map(|s| {
            (
                s.id == id,
                s.ttl_ms,
                s.data.len(),
                s.programs.len(),
                s.metadata.len(),
            )
        })),
    ));
    out.push((
        "listed once",
        outcome(
            store
                .list_sessions()
                .await
                .map(|l| l.iter().filter(|x| x.as_str() == id).count()),
        ),
    ));
    step!("session_exists", store.session_exists(id).await);
    step!("delete key", store.delete(id, "k").await);
    step!("delete key again", store.delete(id, "k").await);
    step!("delete_session", store.delete_session(id).await);
    step!("delete_session again", store.delete_session(id).await);
    step!("get after delete", store.get(id, "k").await);
    step!("set after delete", store.set(id, "k", json!(2)).await);
    step!(
        "ensure again (the id used again)",
        store.ensure_session(id).await
    );
    out.push((
        "the new session is empty",
        outcome(
            store
                .get_session(id)
                .await
                .map(|s| (s.data.len(), s.programs.len(), s.metadata.len())),
        ),
    ));
    step!("delete_session at the end", store.delete_session(id).await);
    out
}

/// What [`script`] gives for a valid id in a store that keeps the docs.
pub(crate) fn expected_valid() -> Vec<(&'static str, String)> {
    let ok = |v: &str| format!("ok {v}");
    vec![
        ("session_exists before", ok("false")),
        ("get before", "gone".into()),
        ("create ttl Duration::MAX", "invalid ttl".into()),
        ("create ttl 0", "invalid ttl".into()),
        ("create 60 s", ok("(true, 60000, 0)")),
        ("create again", "already exists".into()),
        ("ensure", ok("()")),
        ("set", ok("()")),
        ("get", ok("true")),
        ("set empty key", "invalid key".into()),
        ("set 513-byte key", "invalid key".into()),
        ("store_program", ok("()")),
        ("get_program", ok("true")),
        (
            "get_program missing",
            "program not found (in a session: true)".into(),
        ),
        ("get_program empty id", "invalid program id".into()),
        ("get_program 513-byte id", "invalid program id".into()),
        ("store_program empty id", "invalid program id".into()),
        ("update", ok("(true, 1)")),
        ("update ttl u64::MAX", "invalid ttl".into()),
        ("get_session", ok("(true, 60000, 1, 1, 1)")),
        ("listed once", ok("1")),
        ("session_exists", ok("true")),
        ("delete key", ok("true")),
        ("delete key again", ok("false")),
        ("delete_session", ok("true")),
        ("delete_session again", ok("false")),
        ("get after delete", "gone".into()),
        ("set after delete", "gone".into()),
        ("ensure again (the id used again)", ok("()")),
        ("the new session is empty", ok("(0, 0, 0)")),
        ("delete_session at the end", ok("true")),
    ]
}

/// The differences between what `store` did with `id` and what it should
/// have done, as lines for a failure message.
pub(crate) fn differences(
    store: &str,
    id: &str,
    got: &[(&'static str, String)],
    want: &[(&'static str, String)],
) -> Vec<String> {
    let shown: String = format!("{id:?}").chars().take(40).collect();
    got.iter()
        .zip(want)
        .filter(|(g, w)| g != w)
        .map(|(g, w)| format!("{store} {shown} {}: got `{}`, want `{}`", g.0, g.1, w.1))
        .collect()
}

/// After sessions under `ids` raced their expiry with touches, updates and
/// a sweep: each creation ended once, by expiry, and each expiry was heard
/// once, under its id as given (`stats` and `ends` of one store).
pub(crate) fn each_session_ended_once(
    stats: &snakepit_session::StoreStats,
    ends: &[(String, snakepit_session::EndReason)],
    ids: &[&str],
) {
    let expired = ends
        .iter()
        .filter(|e| e.1 == snakepit_session::EndReason::Expired)
        .count() as u64;
    assert!(
        ends.iter().all(|(id, _)| ids.contains(&id.as_str())),
        "ids heard as given: {ends:?}"
    );
    assert!(stats.sessions_created >= 6, "the race happened: {stats:?}");
    assert_eq!(
        (
            stats.sessions_created,
            stats.sessions_deleted,
            stats.active_sessions
        ),
        (stats.sessions_expired, 0, 0),
        "each creation ended once: {stats:?}"
    );
    assert_eq!(expired, stats.sessions_expired, "each expiry heard once");
    assert_eq!(ends.len() as u64, expired, "no deletion heard");
}

/// A memory store whose sweep does not run during a test.
pub(crate) fn memory_store() -> snakepit_session::MemoryStore {
    snakepit_session::MemoryStore::builder()
        .sweep_interval(Duration::from_secs(3600))
        .build()
}

/// [`script`] on each of [`hostile_ids`] in store `a` and in store `b`
/// (each run failing the test after 60 s: a hang): every outcome is the
/// documented one ([`expected_valid`]); the stores are named by `a.0` and
/// `b.0` in the failure.
pub(crate) async fn hostile_ids_as_documented<A: SessionStore, B: SessionStore>(
    a: (&str, &A),
    b: (&str, &B),
) {
    let guard = Duration::from_secs(60);
    let want = expected_valid();
    let mut wrong = Vec::new();
    for id in hostile_ids() {
        let got_a = tokio::time::timeout(guard, script(a.1, &id))
            .await
            .expect("no hang");
        let got_b = tokio::time::timeout(guard, script(b.1, &id))
            .await
            .expect("no hang");
        wrong.extend(differences(a.0, &id, &got_a, &want));
        wrong.extend(differences(b.0, &id, &got_b, &want));
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

/// What a store's listener hears after [`script`] ran on each of
/// [`hostile_ids`]: each session deleted twice (in the script, and at its
/// end), under its id as given.
pub(crate) fn deletions_heard() -> Vec<(String, snakepit_session::EndReason)> {
    let deleted = snakepit_session::EndReason::Deleted;
    hostile_ids()
        .into_iter()
        .flat_map(|id| [(id.clone(), deleted), (id, deleted)])
        .collect()
}

/// How [`race_expiry`] touches its sessions.
pub(crate) struct Race {
    /// The sessions, touched in turn.
    pub ids: [&'static str; 3],
    /// The pause (ms) of touching task `t` (0 or 1) after its `n`th touch:
    /// uneven, around the sessions' TTL.
    pub pause: fn(n: u64, t: u64) -> u64,
    /// Of every `period_ms` of the race, the first `quiet_ms` are quiet
    /// (longer than the TTL), so that every session expires then.
    pub period_ms: u64,
    pub quiet_ms: u64,
    /// How long the race runs.
    pub run_for: Duration,
}

/// Expiry racing with touches in `store`, whose sessions live a short TTL:
/// two tasks touch the sessions of `race.ids` (`ensure_session`, `set`,
/// `get`, `update_session`) while a third sweeps (`cleanup_expired`)
/// without pause, for `race.run_for`, so that each session is created,
/// expires and is created again many times, its expiry found by a touch
/// or by the sweep, whichever comes first. Only "gone" errors may be seen;
/// each task must end within 60 s of the race's end.
pub(crate) async fn race_expiry<S: SessionStore>(store: std::sync::Arc<S>, race: Race) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let start = std::time::Instant::now();
    let mut tasks = Vec::new();
    for t in 0..2u64 {
        let (store, stop) = (store.clone(), stop.clone());
        let (ids, pause, period, quiet) = (race.ids, race.pause, race.period_ms, race.quiet_ms);
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let id = ids[(n % 3) as usize];
                store.ensure_session(id).await.unwrap();
                if let Err(e) = store.set(id, &format!("t{t}"), json!(n)).await {
                    assert!(e.is_gone(), "{e:?}");
                }
                if let Err(e) = store.get(id, "t0").await {
                    assert!(e.is_gone(), "{e:?}");
                }
                let updated = store
                    .update_session(id, |s| {
                        s.metadata.insert(format!("t{t}"), json!(n));
                    })
                    .await;
                if let Err(e) = updated {
                    assert!(e.is_gone(), "{e:?}");
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(pause(n, t))).await;
                let phase = start.elapsed().as_millis() as u64 % period;
                if phase < quiet {
                    tokio::time::sleep(Duration::from_millis(quiet - phase)).await;
                }
            }
        }));
    }
    {
        let (store, stop) = (store.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                store.cleanup_expired().await.unwrap();
                tokio::task::yield_now().await;
            }
        }));
    }
    tokio::time::sleep(race.run_for).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("no hang")
            .unwrap();
    }
}

/// Through `pool` (the session crate's `session_worker.py`, sessions in
/// `store`): a `remember` in each of [`hostile_ids`] reaches the worker
/// with the id exactly as given (`ctx.session_id`), a `recall` gives its
/// value back, and the store holds it under that id.
pub(crate) async fn hostile_ids_keep_their_data<S: SessionStore>(
    pool: &snakepit_core::Pool,
    store: &S,
) {
    for id in hostile_ids() {
        let r = pool
            .execute_in_session(&id, "remember", json!({"key": "k", "value": id}))
            .await
            .unwrap_or_else(|e| panic!("{id:?}: {e}"));
        assert_eq!(r["session_id"], json!(id), "the worker saw the id as given");
        let r = pool
            .execute_in_session(&id, "recall", json!({"key": "k"}))
            .await
            .unwrap();
        assert_eq!(r["value"], json!(id), "{id:?}");
        assert_eq!(store.get(&id, "k").await.unwrap(), Some(json!(id)));
    }
}

/// A call through `pool` in session `id`, which the store refuses, fails
/// with `Error::Session` naming `id` ("invalid session id") and never ran.
pub(crate) async fn refused_before_it_runs(pool: &snakepit_core::Pool, id: &str) {
    let err = pool
        .execute_in_session(id, "remember", json!({"key": "k", "value": 1}))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, snakepit_core::Error::Session { session_id, message }
            if *session_id == id && message.contains("invalid session id")),
        "{:.200}",
        err.to_string()
    );
    assert!(err.never_ran());
}

/// `pool` serves: a `recall` in a session nobody wrote to answers no value.
pub(crate) async fn a_new_session_recalls_nothing(pool: &snakepit_core::Pool) {
    let r = pool
        .execute_in_session("after", "recall", json!({"key": "k"}))
        .await
        .unwrap();
    assert_eq!(r["value"], serde_json::Value::Null);
}

/// Through `pool` of two session workers (sessions in `store`): while the
/// worker of session `id` is busy (a `sleep` of 3 s), a `FailFast` call of
/// `id` fails with `WorkerBusy` naming it; one of each of `twins` runs at
/// once on the other worker, without `id`'s data; and once `store`
/// deletes `id` (its listener tells the pool), a `FailFast` call of it
/// runs.
pub(crate) async fn affinity_until_deleted<S: SessionStore>(
    pool: &snakepit_core::Pool,
    store: &S,
    id: &str,
    twins: &[&str],
) {
    use snakepit_core::{Affinity, CallOptions};
    pool.execute_in_session(id, "remember", json!({"key": "k", "value": "mine"}))
        .await
        .unwrap();
    let busy = {
        let (pool, id) = (pool.clone(), id.to_owned());
        tokio::spawn(async move {
            pool.execute_in_session(&id, "sleep", json!({"seconds": 3}))
                .await
        })
    };
    snakepit_tests::until(15, "the session's worker is busy", || async {
        pool.stats().busy == 1
    })
    .await;
    let fail_fast = |s: &str| CallOptions::new().session(s).affinity(Affinity::FailFast);
    let err = pool
        .execute_with("recall", json!({"key": "k"}), fail_fast(id))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, snakepit_core::Error::WorkerBusy { session_id, .. } if session_id == id),
        "{err:?}"
    );
    for twin in twins {
        let r = pool
            .execute_with("recall", json!({"key": "k"}), fail_fast(twin))
            .await
            .unwrap_or_else(|e| panic!("{twin:?} is another session: {e}"));
        assert_eq!(
            r["value"],
            serde_json::Value::Null,
            "{twin:?} has no data of {id:?}"
        );
    }
    assert!(store.delete_session(id).await.unwrap());
    let r = pool
        .execute_with("recall", json!({"key": "k"}), fail_fast(id))
        .await
        .expect("the deleted session's affinity was forgotten");
    assert_eq!(r["value"], serde_json::Value::Null);
    busy.await.unwrap().unwrap();
}

/// Every operation of `store` that takes a session id, on `id`, each
/// outcome named.
pub(crate) async fn every_operation_on<S: SessionStore>(
    store: &S,
    id: &str,
) -> Vec<(&'static str, String)> {
    vec![
        (
            "create",
            outcome(store.create_session(id, None).await.map(drop)),
        ),
        ("ensure", outcome(store.ensure_session(id).await)),
        (
            "get_session",
            outcome(store.get_session(id).await.map(drop)),
        ),
        (
            "update",
            outcome(store.update_session(id, |_| {}).await.map(drop)),
        ),
        ("delete_session", outcome(store.delete_session(id).await)),
        ("session_exists", outcome(store.session_exists(id).await)),
        ("set", outcome(store.set(id, "k", json!(1)).await)),
        ("get", outcome(store.get(id, "k").await)),
        ("delete", outcome(store.delete(id, "k").await)),
        (
            "store_program",
            outcome(store.store_program(id, "p", json!(1)).await),
        ),
        ("get_program", outcome(store.get_program(id, "p").await)),
    ]
}

/// [`every_operation_on`] `id` (one of [`invalid_ids`]) in `store` (named
/// `name`): the operations whose outcome is not `Invalid` with `what` =
/// "session id", as lines for a failure message.
pub(crate) async fn not_refused<S: SessionStore>(name: &str, store: &S, id: &str) -> Vec<String> {
    let got = every_operation_on(store, id).await;
    let want: Vec<(&'static str, String)> = got
        .iter()
        .map(|(op, _)| (*op, "invalid session id".to_string()))
        .collect();
    differences(name, id, &got, &want)
}

/// Each of `ids` made a live session of `store`, with the data `who` and
/// the program `p`, both the id itself.
pub(crate) async fn each_id_live<S: SessionStore>(store: &S, ids: &[String]) {
    for id in ids {
        store.ensure_session(id).await.unwrap();
        store.set(id, "who", json!(id)).await.unwrap();
        store.store_program(id, "p", json!(id)).await.unwrap();
    }
}

/// After [`each_id_live`] on `ids` (`store` may be another handle on the
/// same sessions): each id reads back only its own data and program, is
/// listed exactly once and counted; then each is deleted.
pub(crate) async fn each_id_reads_back_its_own<S: SessionStore>(store: &S, ids: &[String]) {
    for id in ids {
        assert_eq!(
            store.get(id, "who").await.unwrap(),
            Some(json!(id)),
            "{id:?}"
        );
        assert_eq!(store.get_program(id, "p").await.unwrap(), json!(id));
        let s = store.get_session(id).await.unwrap();
        assert_eq!((s.id.as_str(), s.data.len()), (id.as_str(), 1), "{id:?}");
    }
    let listed = store.list_sessions().await.unwrap();
    assert_eq!(listed.len(), ids.len(), "each id once");
    let listed: std::collections::BTreeSet<String> = listed.into_iter().collect();
    let want: std::collections::BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(listed, want);
    assert_eq!(
        store.stats().await.unwrap().active_sessions,
        ids.len() as u64
    );
    for id in ids {
        assert!(store.delete_session(id).await.unwrap(), "{id:?}");
    }
}
