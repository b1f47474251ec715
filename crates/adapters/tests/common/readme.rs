//! What the README audits (`outside_node_readme.rs`,
//! `outside_python_readme.rs`, `outside_ruby_readme.rs`) share: starting a
//! pool with room for a loaded machine, calls bounded so that none hangs,
//! the check that a pool's only worker was kept, and docs/bridges.md's
//! in-memory session store.

// Every test binary of the crate compiles `common`; only the README audits
// use this module (and `common` is private to each binary).
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use snakepit_core::{CallOptions, CallStream, Error, HostCall, Pool, PoolBuilder, RemoteError};

/// A generous bound for anything that must not hang (not a speed
/// assertion).
pub(crate) const HANG: Duration = Duration::from_secs(60);

/// Starts `builder` with room for a loaded machine (60 s to start a worker,
/// 90 s for the pool) and no health check, so that none replaces a worker
/// behind a test's back; `start()` itself may take 120 s at most.
pub(crate) async fn try_start(builder: PoolBuilder) -> Result<Pool, Error> {
    let builder = builder.configure(|c| {
        c.worker_init_timeout = Duration::from_secs(60);
        c.startup_timeout = Duration::from_secs(90);
        c.health_check_interval = Duration::ZERO;
    });
    tokio::time::timeout(Duration::from_secs(120), builder.start())
        .await
        .expect("start() hung")
}

/// [`try_start`], which must succeed.
pub(crate) async fn start(builder: PoolBuilder) -> Pool {
    try_start(builder)
        .await
        .unwrap_or_else(|e| panic!("start: {e}"))
}

/// `command` with `options`, which must be answered within [`HANG`].
pub(crate) async fn call_with(
    pool: &Pool,
    command: &str,
    args: Value,
    options: CallOptions,
) -> Result<Value, Error> {
    tokio::time::timeout(HANG, pool.execute_with(command, args, options))
        .await
        .unwrap_or_else(|_| panic!("{command} hung"))
}

/// `command` with a 30 s timeout.
pub(crate) async fn call(pool: &Pool, command: &str, args: Value) -> Result<Value, Error> {
    call_with(
        pool,
        command,
        args,
        CallOptions::new().timeout(Duration::from_secs(30)),
    )
    .await
}

/// A streaming call of `command` with a 30 s timeout, which must start.
pub(crate) async fn stream_of(pool: &Pool, command: &str, args: Value) -> CallStream {
    pool.execute_stream(
        command,
        args,
        CallOptions::new().timeout(Duration::from_secs(30)),
    )
    .await
    .unwrap_or_else(|e| panic!("{command}: {e:?}"))
}

/// Checks that the only worker of `pool` is still `pid` and that nothing
/// crashed or was restarted.
pub(crate) fn the_same_worker(pool: &Pool, pid: u32, what: &str) {
    assert_eq!(pool.worker_pids(), vec![pid], "{what}: replaced");
    let s = pool.stats();
    assert_eq!((s.crashes, s.restarts), (0, 0), "{what}: {s:?}");
}

/// The session store of docs/bridges.md ("Host functions and the session
/// store"), in memory: `session.get`, `session.set` and `session.delete`,
/// keyed by the call's session and its `key` argument.
pub(crate) fn with_session_store(builder: PoolBuilder) -> PoolBuilder {
    type Store = Arc<Mutex<HashMap<(String, String), Value>>>;
    fn key(call: &HostCall) -> (String, String) {
        (
            call.session_id.clone().unwrap_or_default(),
            call.args["key"].as_str().unwrap_or_default().to_owned(),
        )
    }
    let store: Store = Arc::default();
    let (get, set, delete) = (store.clone(), store.clone(), store);
    builder
        .host_function("session.get", move |call| {
            let value = get.lock().unwrap().get(&key(&call)).cloned();
            async move { Ok::<_, RemoteError>(value.unwrap_or(Value::Null)) }
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
}
