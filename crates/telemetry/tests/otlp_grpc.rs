//! The same trace as `otlp_http`, exported over OTLP/gRPC.

#![cfg(feature = "grpc")]

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_call_is_one_trace_from_caller_to_python_handler_over_grpc() -> anyhow::Result<()> {
    common::trace_through_pool(snakepit_telemetry::Protocol::Grpc).await
}
