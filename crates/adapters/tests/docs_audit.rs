//! Audit of docs/bridges.md: promises no other test showed, checked with
//! the bundled bridges' real worker processes under a real pool.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use snakepit_adapters::{Bridge, GenericJavaScript, GenericPython, GenericRuby};
use snakepit_core::{Adapter, Error, HostCall, Pool, RemoteError, WireCodec};

/// Kills a process from outside, as an operator or the OOM killer would.
#[allow(clippy::disallowed_methods)] // `kill`, not a worker
fn kill_9(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status();
}

/// The value of `name` in the environment of process `pid`.
fn env_of(pid: u32, name: &str) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("the worker's environ");
    let prefix = format!("{name}=");
    environ
        .split(|b| *b == 0)
        .filter_map(|e| std::str::from_utf8(e).ok())
        .find_map(|e| e.strip_prefix(&prefix).map(str::to_owned))
}

async fn codec_of_generic(adapter: impl Adapter, codec: Option<WireCodec>) -> Option<String> {
    let mut builder = Pool::builder(adapter).size(1);
    if let Some(codec) = codec {
        builder = builder.codec(codec);
    }
    let pool = builder.start().await.expect("the generic worker starts");
    let r = pool
        .execute("echo", json!({"message": "héllo", "n": [1, 2.5]}))
        .await
        .expect("echo");
    assert_eq!(r["echoed"], json!({"message": "héllo", "n": [1, 2.5]}));
    let seen = env_of(pool.worker_pids()[0], "SNAKEPIT_CODEC");
    pool.shutdown().await.unwrap();
    seen
}

/// docs/bridges.md, Adapters: "`GenericPython`, `GenericJavaScript`,
/// `GenericRuby`: the bundled generic workers ..., JSON codec.
/// `Pool::builder(GenericPython).codec(WireCodec::MsgPack)` switches the
/// codec." and, under Codecs: "The pool tells the worker through
/// `SNAKEPIT_CODEC`, and the bridges follow it."
///
/// For each of the three generic adapters the test starts a pool without
/// a codec and one with `.codec(WireCodec::MsgPack)` on the builder, makes
/// an `echo` call through each, and reads `SNAKEPIT_CODEC` from the
/// worker's `/proc/PID/environ`: `json` (or absent, which means JSON) for
/// the first, `msgpack` for the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generic_adapters_speak_json_unless_the_builder_says_msgpack() {
    // The Node.js worker finds the MessagePack package the bridge's own
    // tests installed.
    std::env::set_var(
        "NODE_PATH",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../bridges/node/node_modules"
        ),
    );
    for (name, default, msgpack) in [
        (
            "python",
            codec_of_generic(GenericPython, None).await,
            codec_of_generic(GenericPython, Some(WireCodec::MsgPack)).await,
        ),
        (
            "node",
            codec_of_generic(GenericJavaScript, None).await,
            codec_of_generic(GenericJavaScript, Some(WireCodec::MsgPack)).await,
        ),
        (
            "ruby",
            codec_of_generic(GenericRuby, None).await,
            codec_of_generic(GenericRuby, Some(WireCodec::MsgPack)).await,
        ),
    ] {
        assert!(
            matches!(default.as_deref(), None | Some("json")),
            "{name}: SNAKEPIT_CODEC={default:?} without a codec"
        );
        assert_eq!(msgpack.as_deref(), Some("msgpack"), "{name}");
    }
}

/// docs/bridges.md, Codecs: for Ruby without the `msgpack` gem "the worker
/// stops at start-up with a message saying so", and "Either way
/// `Pool::start` then fails with the worker's message in the error."
/// (The Python and Node.js halves are shown in api_promises.rs.)
///
/// The test puts a `msgpack.rb` that raises `LoadError` (as a missing gem
/// does) on the worker's `RUBYLIB` (kept after the bridge's directory, so
/// it is found before the installed gem), starts the generic Ruby worker
/// with MessagePack, and checks that `start()` fails with
/// `Error::StartFailed` whose text names the gem to install.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ruby_worker_without_the_msgpack_gem_fails_start_with_its_message() {
    let fake = std::env::temp_dir().join(format!("snakepit-no-msgpack-{}", std::process::id()));
    std::fs::create_dir_all(&fake).unwrap();
    std::fs::write(
        fake.join("msgpack.rb"),
        "raise LoadError, 'cannot load such file -- msgpack'\n",
    )
    .unwrap();
    let adapter = Bridge::generic(snakepit_adapters::Language::Ruby)
        .codec(WireCodec::MsgPack)
        .env("RUBYLIB", fake.display().to_string());
    let started = Pool::builder(adapter)
        .size(1)
        .configure(|c| c.breaker_threshold = 1)
        .start()
        .await;
    let _ = std::fs::remove_dir_all(&fake);
    let err = match started {
        Ok(pool) => {
            pool.shutdown().await.unwrap();
            panic!("a Ruby worker without msgpack started");
        }
        Err(e) => e,
    };
    assert!(matches!(err, Error::StartFailed { .. }), "{err:?}");
    let text = format!("{err} {err:?}");
    assert!(
        text.contains("gem install msgpack") || text.contains("ruby-msgpack"),
        "the error carries the worker's message: {text}"
    );
}

/// The code block of docs/bridges.md in `lang` that starts with `first`.
fn bridges_md_block(lang: &str, first: &str) -> String {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/bridges.md"
    ))
    .expect("docs/bridges.md");
    let fence = format!("```{lang}\n{first}");
    let (_, rest) = doc
        .split_once(fence.as_str())
        .unwrap_or_else(|| panic!("docs/bridges.md has no {lang} block starting {first}"));
    let (block, _) = rest.split_once("\n```").expect("the block ends");
    format!("{first}{block}\n")
}

type Store = Arc<Mutex<HashMap<(String, String), Value>>>;

fn key(call: &HostCall) -> (String, String) {
    let session = call.session_id.clone().unwrap_or_default();
    (
        session,
        call.args["key"].as_str().unwrap_or_default().to_owned(),
    )
}

/// docs/bridges.md, Host functions and the session store: "Because the
/// data lives on the host, it survives the death of the worker that served
/// the session. `pool.end_session(id)` forgets a session's worker affinity
/// (not its data)."
///
/// The Python worker of bridges.md (its `visits` command reads and writes
/// `visits` through `ctx.session`) runs in a pool of two with the page's
/// in-memory `session.get`/`session.set`/`session.delete` host functions.
/// The test counts two visits of session `user-42`, calls
/// `end_session("user-42")` and checks that the pool's affinity record is
/// gone (`stats().sessions` back to 0) while the next visit counts 3; then
/// kills both workers (the one that served the session among them) with
/// SIGKILL and checks that a visit served by a replacement counts 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_session_forgets_the_affinity_not_the_data_which_survives_the_worker() {
    let dir = std::env::temp_dir().join(format!("snakepit-end-session-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("worker.py");
    std::fs::write(&script, bridges_md_block("python", "# worker.py")).unwrap();

    let store: Store = Arc::default();
    let (get, set, delete) = (store.clone(), store.clone(), store.clone());
    let pool = Pool::builder(Bridge::python(&script))
        .size(2)
        .host_function("session.get", move |call| {
            let value = get
                .lock()
                .unwrap()
                .get(&key(&call))
                .cloned()
                .unwrap_or(Value::Null);
            async move { Ok::<_, RemoteError>(value) }
        })
        .host_function("session.set", move |call| {
            set.lock()
                .unwrap()
                .insert(key(&call), call.args["value"].clone());
            async move { Ok::<_, RemoteError>(Value::Null) }
        })
        .host_function("session.delete", move |call| {
            let existed = delete.lock().unwrap().remove(&key(&call)).is_some();
            async move { Ok::<_, RemoteError>(Value::Bool(existed)) }
        })
        .start()
        .await
        .expect("the worker of bridges.md starts");

    let visit = || pool.execute_in_session("user-42", "visits", json!({}));
    assert_eq!(visit().await.unwrap()["visits"], 1);
    assert_eq!(visit().await.unwrap()["visits"], 2);
    assert_eq!(pool.stats().sessions, 1, "{:?}", pool.stats());

    pool.end_session("user-42");
    assert_eq!(pool.stats().sessions, 0, "the affinity is forgotten");
    assert_eq!(
        visit().await.unwrap()["visits"],
        3,
        "the data is not forgotten"
    );
    assert_eq!(
        store
            .lock()
            .unwrap()
            .get(&("user-42".into(), "visits".into())),
        Some(&json!(3))
    );

    // Every worker dies, the one that served the session among them.
    let before = pool.worker_pids();
    for pid in &before {
        kill_9(*pid);
    }
    assert!(
        snakepit_tests::eventually(20, || {
            let now = pool.worker_pids();
            now.len() == 2 && now.iter().all(|p| !before.contains(p))
        })
        .await,
        "both workers replaced: {:?}",
        pool.workers()
    );
    assert_eq!(
        visit().await.unwrap()["visits"],
        4,
        "the data outlived the worker"
    );
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
