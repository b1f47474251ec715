//! Connecting a pool to a session store: the `session.*` host functions
//! the bridges call, and the pool's `SessionHook`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;
use snakepit_core::{HostCall, PoolBuilder, RemoteError, SessionEnds, SessionHook};

use crate::error::Error;
use crate::store::SessionStore;

/// Connects a pool to a session store, in one call:
///
/// - every session call (`execute_in_session`, `execute_with` with a
///   session) creates or touches its session in `store` before it is routed;
/// - workers read and write their session's data through host functions,
///   which the bundled bridges call from `ctx.session.get/set/delete`:
///   `session.get {key}`, `session.set {key, value}`, `session.delete {key}`;
///   and programs through `session.get_program {program_id}`,
///   `session.store_program {program_id, program}` and
///   `session.get_global_program {program_id}`;
/// - when the store removes a session (expiry or `delete_session`), the
///   pool forgets the session's worker affinity.
///
/// ```no_run
/// use std::sync::Arc;
/// use serde_json::json;
/// use snakepit_core::Pool;
/// use snakepit_session::{MemoryStore, SessionStore};
///
/// # async fn demo(adapter: impl snakepit_core::Adapter) -> anyhow::Result<()> {
/// let store = Arc::new(MemoryStore::new());
/// let pool = snakepit_session::attach(Pool::builder(adapter), store.clone())
///     .size(4)
///     .start()
///     .await?;
/// pool.execute_in_session("user_1", "remember", json!({"fact": "likes tea"})).await?;
/// // The worker called ctx.session.set(...): the data is on the host.
/// println!("{:?}", store.get("user_1", "fact").await?);
/// # Ok(()) }
/// ```
pub fn attach<S: SessionStore>(builder: PoolBuilder, store: Arc<S>) -> PoolBuilder {
    let functions = StoreFunctions {
        builder,
        store: store.clone(),
    };
    functions
        .add("session.get", |s, call| async move {
            let (id, key) = session_and(&call, "key")?;
            let v = s.get(&id, &key).await.map_err(|e| e.to_remote())?;
            Ok(v.unwrap_or(Value::Null))
        })
        .add("session.set", |s, call| async move {
            let (id, key) = session_and(&call, "key")?;
            let value = call.args.get("value").cloned().unwrap_or(Value::Null);
            s.set(&id, &key, value).await.map_err(|e| e.to_remote())?;
            Ok(Value::Null)
        })
        .add("session.delete", |s, call| async move {
            let (id, key) = session_and(&call, "key")?;
            let gone = s.delete(&id, &key).await.map_err(|e| e.to_remote())?;
            Ok(Value::Bool(gone))
        })
        .add("session.get_program", |s, call| async move {
            let (id, pid) = session_and(&call, "program_id")?;
            s.get_program(&id, &pid).await.map_err(|e| e.to_remote())
        })
        .add("session.store_program", |s, call| async move {
            let (id, pid) = session_and(&call, "program_id")?;
            let program = call.args.get("program").cloned().unwrap_or(Value::Null);
            s.store_program(&id, &pid, program)
                .await
                .map_err(|e| e.to_remote())?;
            Ok(Value::Null)
        })
        .add("session.get_global_program", |s, call| async move {
            let pid = string_arg(&call, "program_id")?;
            s.get_global_program(&pid).await.map_err(|e| e.to_remote())
        })
        .builder
        .session_hook(StoreHook { store })
}

/// A pool builder being given host functions that run against one store.
struct StoreFunctions<S> {
    builder: PoolBuilder,
    store: Arc<S>,
}

impl<S: SessionStore> StoreFunctions<S> {
    /// Registers host function `name`: each call runs `f` with its own
    /// handle on the store.
    fn add<F, Fut>(self, name: &str, f: F) -> Self
    where
        F: Fn(Arc<S>, HostCall) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, RemoteError>> + Send + 'static,
    {
        let store = self.store.clone();
        StoreFunctions {
            builder: self
                .builder
                .host_function(name, move |call| f(store.clone(), call)),
            store: self.store,
        }
    }
}

/// The session of a host call and one string argument.
fn session_and(call: &HostCall, arg: &str) -> Result<(String, String), RemoteError> {
    let id = call.session_id.clone().ok_or_else(|| {
        RemoteError::new(
            "NoSession",
            format!(
                "{} needs a session: call the command with execute_in_session",
                call.function
            ),
        )
    })?;
    Ok((id, string_arg(call, arg)?))
}

fn string_arg(call: &HostCall, arg: &str) -> Result<String, RemoteError> {
    match call.args.get(arg) {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(RemoteError::new(
            "InvalidArgument",
            format!("{} needs a string `{arg}`", call.function),
        )),
    }
}

/// The pool's hook: create-or-touch before routing; end of session drops
/// affinity.
struct StoreHook<S> {
    store: Arc<S>,
}

impl<S: SessionStore> SessionHook for StoreHook<S> {
    fn touch(&self, session_id: &str) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> {
        let store = self.store.clone();
        let id = session_id.to_owned();
        Box::pin(async move {
            store
                .ensure_session(&id)
                .await
                .map_err(|e: Error| e.to_string())
        })
    }

    fn attached(&self, ends: SessionEnds) {
        // Dropped by the store at the first session end after the pool is
        // gone: a store that outlives many pools keeps no listener of theirs.
        self.store
            .on_session_end_while(Arc::new(move |id, _| ends.end(id)));
    }
}
