//! The original README's ML workflow: create a program in a session, then
//! run it, with the program kept in the session store on the host, so any
//! worker can run it. Runs against real Python workers.
//!
//! `cargo run -p snakepit-session --example ml_workflow`

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;
use snakepit_adapters::Bridge;
use snakepit_core::Pool;
use snakepit_session::{attach, execute_program_command, MemoryStore, SessionStore};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let worker = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/ml_worker.py");
    let store = Arc::new(MemoryStore::new());
    let pool = attach(Pool::builder(Bridge::python(worker)), store.clone())
        .size(2)
        .start()
        .await?;

    // Create an ML program/model.
    let response = execute_program_command(
        &pool,
        &*store,
        "ml_session_123",
        "create_program",
        json!({"signature": "question -> answer", "model": "gpt-3.5-turbo", "temperature": 0.7}),
    )
    .await?;
    let program_id = response["program_id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no program_id in {response}"))?
        .to_owned();
    println!("created {program_id}: {}", response["signature"]);

    // Execute the program multiple times.
    for question in [
        "What is the capital of France?",
        "How many legs does a spider have?",
    ] {
        let result = execute_program_command(
            &pool,
            &*store,
            "ml_session_123",
            "execute_program",
            json!({"program_id": program_id, "input": {"question": question}}),
        )
        .await?;
        println!("{question} -> {}", result["outputs"]["answer"]);
    }

    // The program and the conversation live on the host.
    let program = store.get_program("ml_session_123", &program_id).await?;
    assert_eq!(program["execution_count"], 2);
    assert_eq!(program["config"]["model"], "gpt-3.5-turbo");
    let history = store.get("ml_session_123", "history").await?;
    assert_eq!(
        history.as_ref().map(|h| h[0]["a"].clone()),
        Some(json!("Paris"))
    );
    println!("history: {}", history.unwrap_or_default());

    // A program from another session is unknown here: the worker says so.
    let err = execute_program_command(
        &pool,
        &*store,
        "other_session",
        "execute_program",
        json!({"program_id": program_id, "input": {"question": "?"}}),
    )
    .await
    .unwrap_err();
    println!("other session: {err}");

    // Global programs, readable from any session and host.
    store
        .store_global_program(
            "template_1",
            json!({"type": "qa_template", "prompt": "Answer the following question: {question}"}),
        )
        .await?;
    println!(
        "template_1: {}",
        store.get_global_program("template_1").await?
    );
    println!("store: {:?}", store.stats().await?);
    pool.shutdown().await?;
    Ok(())
}
