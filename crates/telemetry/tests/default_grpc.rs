//! docs/telemetry.md: the transport defaults to `http/protobuf` "when the
//! `http` feature is on". Built without it (`--no-default-features
//! --features grpc,json`, as `cargo xtask ci` runs this file), the default
//! is gRPC: a guard given only a gRPC receiver's address, and no protocol,
//! delivers its spans there.

#![cfg(all(feature = "grpc", not(feature = "http")))]

mod common;

use std::time::Duration;

use common::{in_own_process, Rotel};

#[test]
fn without_the_http_feature_the_default_transport_is_grpc() {
    if in_own_process(
        "without_the_http_feature_the_default_transport_is_grpc",
        &[],
    )
    .is_some()
    {
        return;
    }
    let rotel = Rotel::start().unwrap();
    let guard = snakepit_telemetry::Telemetry::new()
        .endpoint(rotel.grpc_base())
        .stderr_logs(None)
        .init()
        .unwrap();
    drop(tracing::info_span!("grpc_by_default").entered());
    guard.shutdown().unwrap();
    let (spans, arrived) = rotel.wait_for(Duration::from_secs(20), |spans, _| {
        spans.iter().any(|s| s.name == "grpc_by_default")
    });
    assert!(arrived, "the span did not arrive over gRPC: {spans:?}");
}
