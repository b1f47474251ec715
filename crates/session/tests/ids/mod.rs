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
