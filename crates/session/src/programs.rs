//! The original's program helpers: programs a worker creates in a session
//! and runs later.

use serde_json::{json, Map, Value};
use snakepit_core::Pool;

use crate::error::{Error, Result};
use crate::session::unix_ms;
use crate::store::SessionStore;

/// Runs a program command in a session, as the original's
/// `SessionHelpers.execute_program_command`: for ML frameworks whose workers
/// create programs (a model with its settings) and then run them.
///
/// - The arguments get `session_id` (replacing one of the caller's);
///   arguments that are not a map are sent as `{"input": args}`, and
///   `null` as `{}`.
/// - `execute_program`: the program stored for `args.program_id` in the
///   session is added as `program_data`, so any worker can run it, including
///   one that has never seen the session; after a success its
///   `execution_count` and `last_executed_ms` are updated atomically.
/// - `create_program`: after a success, the reply's `program_id` and what
///   describes the program (`signature`, `signature_def`, `program_type`,
///   `field_mapping`, `fallback_used`, and the arguments the program was
///   created with) are stored in the session.
/// - Any other command runs in the session unchanged.
///
/// Once the worker has answered, its result is returned whatever the
/// bookkeeping after it meets (a session deleted or expired meanwhile, a
/// store that fails, a program id the store refuses): the program ran, and
/// a caller that took an error for "it did not" would run it again. What
/// could not be recorded is logged (`snakepit::session`, warn).
///
/// The session is created if it does not exist yet (by the pool, when it was
/// built with [`attach`](crate::attach), or here).
///
/// ```no_run
/// # async fn demo(pool: snakepit_core::Pool, store: snakepit_session::MemoryStore) -> Result<(), snakepit_session::Error> {
/// use serde_json::json;
/// use snakepit_session::execute_program_command;
///
/// let created = execute_program_command(&pool, &store, "ml_session_123", "create_program",
///     json!({"signature": "question -> answer", "model": "gpt-3.5-turbo", "temperature": 0.7})).await?;
/// let program_id = created["program_id"].as_str().unwrap_or_default();
/// let result = execute_program_command(&pool, &store, "ml_session_123", "execute_program",
///     json!({"program_id": program_id, "input": {"question": "What is the capital of France?"}})).await?;
/// # Ok(()) }
/// ```
pub async fn execute_program_command<S: SessionStore>(
    pool: &Pool,
    store: &S,
    session_id: &str,
    command: &str,
    args: Value,
) -> Result<Value> {
    store.ensure_session(session_id).await?;
    let mut args = match args {
        Value::Object(m) => m,
        Value::Null => Map::new(),
        other => {
            let mut m = Map::new();
            m.insert("input".into(), other);
            m
        }
    };
    args.insert("session_id".into(), Value::String(session_id.to_owned()));
    let program_id = args
        .get("program_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    if command == "execute_program" {
        if let Some(pid) = &program_id {
            match store.get_program(session_id, pid).await {
                Ok(program) => {
                    args.insert("program_data".into(), program);
                }
                // The worker reports an unknown program itself.
                Err(Error::ProgramNotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    let created_with = (command == "create_program").then(|| args.clone());
    let response = pool
        .execute_in_session(session_id, command, Value::Object(args))
        .await?;
    if let Some(created_with) = created_with {
        if let Some(pid) = response.get("program_id").and_then(Value::as_str) {
            let pick = |k: &str| response.get(k).cloned().unwrap_or(Value::Null);
            let mut created_with = created_with;
            created_with.remove("session_id");
            let program = json!({
                "program_id": pid,
                "signature": pick("signature"),
                "signature_def": response.get("signature_def").cloned().unwrap_or_else(|| pick("signature")),
                "program_type": response.get("program_type").cloned().unwrap_or_else(|| json!("predict")),
                "field_mapping": response.get("field_mapping").cloned().unwrap_or_else(|| json!({})),
                "fallback_used": response.get("fallback_used").cloned().unwrap_or(Value::Bool(false)),
                "config": created_with,
                "created_at_ms": unix_ms(),
                "execution_count": 0,
                "last_executed_ms": null,
            });
            if let Err(e) = store.store_program(session_id, pid, program).await {
                not_recorded(session_id, command, pid, &e);
            }
        }
    } else if command == "execute_program" {
        if let Some(pid) = program_id {
            let now = unix_ms();
            let counted = store
                .update_session(session_id, |s| {
                    if let Some(Value::Object(p)) = s.programs.get_mut(&pid) {
                        let n = p
                            .get("execution_count")
                            .and_then(Value::as_u64)
                            .unwrap_or(0);
                        p.insert("execution_count".into(), json!(n.saturating_add(1)));
                        p.insert("last_executed_ms".into(), json!(now));
                    }
                })
                .await;
            if let Err(e) = counted {
                not_recorded(session_id, command, &pid, &e);
            }
        }
    }
    Ok(response)
}

/// The worker answered, but what its answer changes in the session could
/// not be stored: said, not failed.
fn not_recorded(session_id: &str, command: &str, program_id: &str, e: &Error) {
    tracing::warn!(target: "snakepit::session", session = session_id, command, program = program_id,
        "the program call succeeded, but the session could not record it: {e}");
}
