//! Round 7 of the outside review of the `snakepit` tool, run as a user
//! runs it (the real binary, real workers, a real nats-server):
//!
//! - Ctrl-C or SIGTERM while the tool exports its last spans to a receiver
//!   that never answers ends it at once, with 130 or 143 (the stop
//!   handlers a command installed used to swallow it until the export
//!   gave up);
//! - `bench --nats` with an even number of rounds gives true medians (the
//!   mean of the middle two), not the upper of the two.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Dir;
use serde_json::Value;

/// An OTLP/HTTP receiver that takes each connection, reads what comes,
/// and never answers; it counts the requests that came (their head read)
/// and the connections the client closed.
struct Silent {
    port: u16,
    requests: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

impl Silent {
    fn start() -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (r, c) = (requests.clone(), closed.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let (r, c) = (r.clone(), c.clone());
                std::thread::spawn(move || {
                    let mut seen = Vec::new();
                    let mut buf = [0; 4096];
                    let mut counted = false;
                    loop {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                        if !counted && seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            counted = true;
                            r.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    c.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Silent {
            port,
            requests,
            closed,
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn kill(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) on the child this test started and has not reaped.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

/// `snakepit exec echo` exporting to a receiver that never answers, sent
/// `signal` once its final export is under way (a request came, no
/// connection given up yet): its exit status and stderr. `None` when the
/// export had already given up by the time the signal went (a machine so
/// loaded that the test could not tell; the caller tries again).
fn stopped_during_final_export(
    signal: libc::c_int,
    protocol: &str,
) -> Option<(Option<i32>, String)> {
    let receiver = Silent::start();
    let dir = Dir::new("round7-final-export");
    let mut child = common::command(
        &dir.0,
        &["exec", "echo", r#"{"x": 1}"#],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.base()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            // Nothing exported before the end, however slowly the call runs.
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "600000"),
        ],
    )
    .spawn()
    .expect("snakepit runs");
    let deadline = Instant::now() + Duration::from_secs(120);
    while receiver.requests.load(Ordering::SeqCst) == 0 {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("snakepit ended before it exported: {status:?}");
        }
        assert!(Instant::now() < deadline, "no export ever came");
        std::thread::sleep(Duration::from_millis(5));
    }
    let gave_up_before = receiver.closed.load(Ordering::SeqCst) > 0;
    kill(child.id(), signal);
    let out = child.wait_with_output().expect("snakepit ends");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if gave_up_before && out.status.code() == Some(0) {
        return None;
    }
    Some((out.status.code(), stderr))
}

fn the_final_export_is_ended_by(signal: libc::c_int, protocol: &str, code: i32, name: &str) {
    for _ in 0..5 {
        let Some((status, stderr)) = stopped_during_final_export(signal, protocol) else {
            continue;
        };
        assert_eq!(status, Some(code), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "error: stopped by {name}: what was still to export was dropped"
            )),
            "{stderr}"
        );
        return;
    }
    panic!("the export gave up before every signal the test sent");
}

/// docs/cli.md (Traces): "A Ctrl-C or SIGTERM during that wait ends it at
/// once: what was still to export is dropped, the command says so ... and
/// exits with 130 or 143". Before, `exec`'s stop handlers, still installed,
/// swallowed the Ctrl-C and the tool went on waiting and exited 0.
#[test]
fn ctrl_c_during_the_final_export_ends_the_tool_with_130() {
    the_final_export_is_ended_by(libc::SIGINT, "http/protobuf", 130, "Ctrl-C");
}

/// The same over gRPC, whose exporter runs on a runtime of its own (the
/// receiver reads the connection's preface and never answers).
#[test]
fn ctrl_c_during_the_final_grpc_export_ends_the_tool_with_130() {
    the_final_export_is_ended_by(libc::SIGINT, "grpc", 130, "Ctrl-C");
}

#[test]
fn sigterm_during_the_final_export_ends_the_tool_with_143() {
    the_final_export_is_ended_by(libc::SIGTERM, "http/protobuf", 143, "SIGTERM");
}

/// docs/cli.md (bench, cluster): "medians and ranges". Of two rounds the
/// median is the mean of the two, so wherever the two rounds differ it
/// lies strictly between the range's ends, never on the upper one.
#[test]
fn bench_nats_medians_of_two_rounds_are_the_mean_of_both() {
    let nats = snakepit_tests::NatsServer::start();
    let dir = Dir::new("round7-bench-nats");
    let out = common::command(
        &dir.0,
        &[
            "bench",
            "--nats",
            &nats.url,
            "--workers",
            "2",
            "--requests",
            "40",
            "--concurrency",
            "4",
            "--rounds",
            "2",
            "--json",
        ],
        &[],
    )
    .output()
    .expect("snakepit runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(r["rounds"], 2, "{r}");
    let mut checked = 0;
    for (key, figure) in r.as_object().unwrap() {
        let (Some(median), Some(min), Some(max)) = (
            figure["median"].as_f64(),
            figure["min"].as_f64(),
            figure["max"].as_f64(),
        ) else {
            continue;
        };
        // Each figure is rounded (to whole numbers at most), the median
        // too: of ends closer than that, it may round onto one.
        if max - min < 3.0 {
            continue;
        }
        checked += 1;
        assert!(
            min < median && median < max,
            "{key}: median {median} of {min} and {max}"
        );
        // Three roundings, each by at most half a unit: 1 apart at most.
        assert!(
            (median - (min + max) / 2.0).abs() <= 1.0,
            "{key}: median {median} of {min} and {max}"
        );
    }
    // Throughput (calls per second) differs between two rounds by more.
    assert!(checked > 0, "no figure differed between the rounds: {r}");
}
