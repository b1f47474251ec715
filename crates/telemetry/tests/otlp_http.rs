//! A trace from a real pool call with a Python worker, exported over
//! OTLP/HTTP to a real receiver (Rotel), parent/child links checked.

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_call_is_one_trace_from_caller_to_python_handler_over_http() -> anyhow::Result<()> {
    common::trace_through_pool(snakepit_telemetry::Protocol::HttpProtobuf).await
}
