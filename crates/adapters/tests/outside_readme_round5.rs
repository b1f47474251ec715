//! Round 5 of outside review, README.md as promises to users: the
//! `max_frame_size` row of the configuration table ("Workers are told the
//! limit (`SNAKEPIT_MAX_FRAME_SIZE`): a bundled bridge answers a larger
//! result with a `Remote` error of type `ResultTooLarge` and stays"; "A
//! larger request is refused with `Codec` and never sent") and the
//! Troubleshooting entry for `ResultTooLarge` ("Raise `max_frame_size`, or
//! return less (or stream it in chunks)"), tested end to end through real
//! pools of the three bundled bridges (and the Python bridge's asyncio
//! mode) in both codecs. The earlier rounds
//! check one size well below and one well above the limit; these walk every
//! size across it, and the replies that are not results (a failed reply, a
//! chunk, a host call). The workers are
//! `tests/workers/round5_readme_limits.{py,js,rb}`.

#[allow(dead_code)] // this file uses only some of the shared helpers
mod common;

use std::time::Duration;

use common::readme::{call, start, stream_of, the_same_worker, with_session_store, HANG};
use common::{node_modules, worker};
use futures::StreamExt;
use serde_json::{json, Value};
use snakepit_adapters::Bridge;
use snakepit_core::{CallOptions, Error, Pool, PoolBuilder, StreamItem, WireCodec};

const CODECS: [WireCodec; 2] = [WireCodec::Json, WireCodec::MsgPack];

/// The pool's `max_frame_size` in these tests: well above every bridge's
/// hello and small replies, small enough to walk across one byte at a time.
const LIMIT: usize = 4096;

/// How far below the limit the walks start: a reply or request this much
/// smaller than the limit always fits its frame's other fields.
const MARGIN: usize = 200;

fn python(codec: WireCodec) -> Bridge {
    Bridge::python(worker("round5_readme_limits.py")).codec(codec)
}

/// The same script in asyncio mode (`async def` handlers, up to four
/// calls at once).
fn python_async(codec: WireCodec) -> Bridge {
    python(codec).env("R5_ASYNC", "1")
}

fn node(codec: WireCodec) -> Bridge {
    Bridge::node(worker("round5_readme_limits.js"))
        .env("NODE_PATH", node_modules())
        .codec(codec)
}

fn ruby(codec: WireCodec) -> Bridge {
    Bridge::ruby(worker("round5_readme_limits.rb")).codec(codec)
}

/// The three bridges under `codec`, each named with its language, and
/// the Python bridge's asyncio mode.
fn every_bridge(codec: WireCodec) -> [(String, Bridge); 4] {
    [
        (format!("python {codec}"), python(codec)),
        (format!("python asyncio {codec}"), python_async(codec)),
        (format!("node {codec}"), node(codec)),
        (format!("ruby {codec}"), ruby(codec)),
    ]
}

/// One worker of `bridge` under a pool whose `max_frame_size` is
/// [`LIMIT`], and that worker's pid.
async fn one_worker(builder: PoolBuilder) -> (Pool, u32) {
    let pool = start(builder.size(1).configure(|c| c.max_frame_size = LIMIT)).await;
    let pid = pool.worker_pids()[0];
    (pool, pid)
}

/// The error type of a failed reply, or a description of what else `err`
/// is.
fn remote_type(err: &Error) -> String {
    match err.remote() {
        Some(remote) => remote.kind.clone().unwrap_or_default(),
        None => format!("not a failed reply: {err:?}"),
    }
}

/// README, Configuration, `max_frame_size`: "a bundled bridge answers a
/// larger result with a `Remote` error of type `ResultTooLarge` and
/// stays; a larger frame from a worker is a protocol error (the worker is
/// replaced)". For every result size from [`MARGIN`] bytes under the limit
/// to 16 bytes over it, one byte at a time, in every bridge and both
/// codecs: each reply is the result, whole, or a `ResultTooLarge` failure;
/// a bridge that measured its frame differently from the pool (an
/// off-by-one, the 4-byte header counted or not) would write a frame the
/// pool takes as a protocol error at some size here, and lose its worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_result_size_across_max_frame_size_is_delivered_or_result_too_large() {
    for codec in CODECS {
        for (what, bridge) in every_bridge(codec) {
            let (pool, pid) = one_worker(Pool::builder(bridge)).await;
            let mut largest = None;
            for n in LIMIT - MARGIN..=LIMIT + 16 {
                match call(&pool, "sized", json!({ "n": n })).await {
                    Ok(r) => {
                        assert_eq!(r.as_str().map(str::len), Some(n), "{what} {n}");
                        largest = Some(n);
                    }
                    Err(err) => {
                        assert_eq!(remote_type(&err), "ResultTooLarge", "{what} {n}: {err}");
                        assert!(!err.never_ran() && !err.is_crash(), "{what} {n}: {err}");
                    }
                }
            }
            let largest = largest.unwrap_or_else(|| panic!("{what}: no size went through"));
            assert!(
                largest < LIMIT,
                "{what}: a result of {largest} bytes cannot fit a frame of {LIMIT}"
            );
            the_same_worker(&pool, pid, &what);
            pool.shutdown().await.unwrap();
        }
    }
}

/// README, Configuration, `max_frame_size`: "the largest frame either
/// way. A larger request is refused with `Codec` and never sent." For
/// every argument size from [`MARGIN`] bytes under the limit to 16 bytes
/// over it, in every bridge and both codecs: each call either reaches the
/// worker whole (it answers with the length it read) or is refused as a
/// `Codec` error of kind `too_large` that never ran; the bridge, which reads
/// with the same limit, never takes a frame the pool sent as too large (it
/// would answer with a protocol error or stop, and lose its worker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_size_across_max_frame_size_is_read_whole_or_refused_unsent() {
    for codec in CODECS {
        for (what, bridge) in every_bridge(codec) {
            let (pool, pid) = one_worker(Pool::builder(bridge)).await;
            let mut largest = None;
            for n in LIMIT - MARGIN..=LIMIT + 16 {
                let s = "y".repeat(n);
                match call(&pool, "length", json!({ "s": s })).await {
                    Ok(r) => {
                        assert_eq!(r["len"].as_u64(), Some(n as u64), "{what} {n}: {r}");
                        largest = Some(n);
                    }
                    Err(Error::Codec(e)) => {
                        assert_eq!(e.kind(), "too_large", "{what} {n}: {e}");
                        assert!(Error::Codec(e).never_ran(), "{what} {n}");
                    }
                    Err(err) => panic!("{what} {n}: neither read nor refused: {err:?}"),
                }
            }
            let largest = largest.unwrap_or_else(|| panic!("{what}: no size went through"));
            assert!(largest < LIMIT, "{what}: {largest} bytes of arguments sent");
            assert_eq!(
                pool.stats().errors,
                pool.stats().requests - pool.stats().completed
            );
            the_same_worker(&pool, pid, &what);
            pool.shutdown().await.unwrap();
        }
    }
}

/// README, Errors: `Remote` is "the handler failed: type, message,
/// traceback", and the `max_frame_size` row: a bundled bridge "stays"
/// when its reply would be too large. A handler that fails with a message
/// twice the limit long: the caller gets a failed reply (`remote()` is
/// some, the call ran, no crash) and the same worker serves the next call,
/// in every bridge and both codecs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_whose_message_is_above_max_frame_size_is_a_failed_reply_and_the_worker_stays() {
    for codec in CODECS {
        for (what, bridge) in every_bridge(codec) {
            let (pool, pid) = one_worker(Pool::builder(bridge)).await;
            let err = call(&pool, "fail_long", json!({ "n": 2 * LIMIT }))
                .await
                .expect_err(&what);
            assert!(
                err.remote().is_some() && !err.never_ran() && !err.is_crash(),
                "{what}: {err:?}"
            );
            assert!(
                err.to_string().len() < 2 * LIMIT,
                "{what}: the message came whole"
            );
            // A shorter failure still comes with its own type and message.
            let err = call(&pool, "fail_long", json!({ "n": 10 }))
                .await
                .expect_err(&what);
            let remote = err.remote().unwrap_or_else(|| panic!("{what}: {err:?}"));
            assert!(remote.message.contains("yyyyyyyyyy"), "{what}: {err}");
            let r = call(&pool, "pid", json!({})).await.unwrap();
            assert_eq!(r["pid"].as_u64(), Some(u64::from(pid)), "{what}");
            the_same_worker(&pool, pid, &what);
            pool.shutdown().await.unwrap();
        }
    }
}

/// README, Troubleshooting, "`Remote` error of type `ResultTooLarge`":
/// "Raise `max_frame_size`, or return less (or stream it in chunks)". A
/// handler that streams three times the limit as twelve chunks of a quarter
/// of it: every chunk reaches the caller, in order, then the final result,
/// in every bridge and both codecs, and the worker stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_above_max_frame_size_streamed_in_chunks_arrives_whole() {
    for codec in CODECS {
        for (what, bridge) in every_bridge(codec) {
            let (pool, pid) = one_worker(Pool::builder(bridge)).await;
            let size = LIMIT / 4;
            let mut stream = stream_of(&pool, "chunks", json!({ "count": 12, "size": size })).await;
            let (mut chunks, mut done) = (0, None);
            while let Some(item) = tokio::time::timeout(HANG, stream.next())
                .await
                .unwrap_or_else(|_| panic!("{what}: the stream hung"))
            {
                match item.unwrap_or_else(|e| panic!("{what}: {e:?}")) {
                    StreamItem::Chunk(c) => {
                        assert_eq!(c.as_str().map(str::len), Some(size), "{what}");
                        chunks += 1;
                    }
                    StreamItem::Done(v) => done = Some(v),
                    other => panic!("{what}: {other:?}"),
                }
            }
            assert_eq!(chunks, 12, "{what}: {chunks} chunks of {size} bytes");
            assert_eq!(done, Some(json!({"sent": 12})), "{what}");
            the_same_worker(&pool, pid, &what);
            pool.shutdown().await.unwrap();
        }
    }
}

/// The same Troubleshooting entry, for a chunk that is itself too large
/// (docs/bridges.md, the bridges' table: a chunk above the limit "ends the
/// call with `ResultTooLarge`"; in Python `ctx.emit` raises it and "the
/// call's reply is that failure"). The chunk before it arrives, the stream
/// ends with a `Remote` error of type `ResultTooLarge`, and the same worker
/// serves the next call, in every bridge and both codecs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_above_max_frame_size_ends_its_stream_with_result_too_large_and_the_worker_stays() {
    for codec in CODECS {
        for (what, bridge) in every_bridge(codec) {
            let (pool, pid) = one_worker(Pool::builder(bridge)).await;
            let mut stream = stream_of(&pool, "big_chunk", json!({ "n": 2 * LIMIT })).await;
            let mut items = Vec::new();
            while let Some(item) = tokio::time::timeout(HANG, stream.next())
                .await
                .unwrap_or_else(|_| panic!("{what}: the stream hung"))
            {
                items.push(item);
            }
            assert!(
                matches!(items.first(), Some(Ok(StreamItem::Chunk(c))) if c == "small"),
                "{what}: {items:?}"
            );
            let last = items.last().unwrap();
            match last {
                Err(err) => assert_eq!(remote_type(err), "ResultTooLarge", "{what}: {err}"),
                Ok(other) => panic!("{what}: the stream ended with {other:?}"),
            }
            assert_eq!(items.len(), 2, "{what}: {items:?}");
            let r = call(&pool, "pid", json!({})).await.unwrap();
            assert_eq!(r["pid"].as_u64(), Some(u64::from(pid)), "{what}");
            the_same_worker(&pool, pid, &what);
            pool.shutdown().await.unwrap();
        }
    }
}

/// README, Sessions: workers read and write session data "through host
/// calls (`ctx.session.get/set` in every bridge)", and the
/// `max_frame_size` row: a larger frame from a worker would cost the
/// worker. A `ctx.session.set` whose value is twice the limit: the bundled
/// bridge does not send it; the handler sees a host-call error of type
/// `ResultTooLarge` (docs/bridges.md), its call succeeds, and the same worker
/// serves on, in every bridge and both codecs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_set_above_max_frame_size_fails_in_the_handler_and_the_worker_stays() {
    for codec in CODECS {
        for (what, bridge) in every_bridge(codec) {
            let (pool, pid) = one_worker(with_session_store(Pool::builder(bridge))).await;
            let options = CallOptions::new()
                .timeout(Duration::from_secs(30))
                .session("s1");
            let r = common::readme::call_with(
                &pool,
                "set_big",
                json!({ "n": 2 * LIMIT }),
                options.clone(),
            )
            .await
            .unwrap_or_else(|e| panic!("{what}: {e:?}"));
            assert_eq!(r, json!({"error": "ResultTooLarge"}), "{what}");
            // A value that fits is stored as usual.
            let r = common::readme::call_with(&pool, "set_big", json!({ "n": 10 }), options)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e:?}"));
            assert_eq!(r, json!({"error": null}), "{what}");
            the_same_worker(&pool, pid, &what);
            pool.shutdown().await.unwrap();
        }
    }
}

/// README, Configuration, `max_frame_size`: "Workers are told the limit
/// (`SNAKEPIT_MAX_FRAME_SIZE`)". A user who also puts that variable in the
/// bridge's own environment (a copied `.env`, a stale setting) must not
/// raise the limit the worker writes to past the one the pool reads: the
/// pool's value reaches the worker, and a result above it is still
/// `ResultTooLarge` with the worker kept, in every bridge, started plainly
/// and (Python, Ruby) preloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pools_max_frame_size_wins_over_one_set_in_the_bridges_environment() {
    let stale = "1000000000";
    let bridges: Vec<(String, Bridge)> = every_bridge(WireCodec::Json)
        .into_iter()
        .chain([
            (
                "python preloaded".to_owned(),
                python(WireCodec::Json).preload(),
            ),
            ("ruby preloaded".to_owned(), ruby(WireCodec::Json).preload()),
        ])
        .collect();
    for (what, bridge) in bridges {
        let bridge = bridge.env("SNAKEPIT_MAX_FRAME_SIZE", stale);
        let (pool, pid) = one_worker(Pool::builder(bridge)).await;
        let r = call(&pool, "pid", json!({})).await.unwrap();
        assert_eq!(r["limit"], Value::from(LIMIT.to_string()), "{what}: {r}");
        let err = call(&pool, "sized", json!({ "n": 2 * LIMIT }))
            .await
            .expect_err(&what);
        assert_eq!(remote_type(&err), "ResultTooLarge", "{what}: {err}");
        the_same_worker(&pool, pid, &what);
        pool.shutdown().await.unwrap();
    }
}

/// Texts whose size on the wire is not their length in characters: two-,
/// three- and four-byte UTF-8 (the last two UTF-16 units in JavaScript),
/// and characters JSON writes escaped (a control character as six bytes,
/// a quote and a backslash as two, U+2028 escaped by some encoders).
const TEXTS: [&str; 7] = ["é", "€", "😀", "\u{1}", "\"", "\\", "\u{2028}"];

/// The lengths, in repeats of a text, that the walks below try: from an
/// eighth of the limit (a text six bytes on the wire crosses it there) to
/// past it, in steps of 13, and a few exact fractions.
fn repeats() -> Vec<usize> {
    let mut n: Vec<usize> = (LIMIT / 8..=LIMIT + 16).step_by(13).collect();
    n.extend([LIMIT / 6, LIMIT / 4, LIMIT / 3, LIMIT / 2, LIMIT - 1, LIMIT]);
    n
}

/// What one call of the walk below ended with: the reply's own check
/// passed, or a `ResultTooLarge` failure.
enum Outcome {
    Whole,
    TooLarge,
}

/// README, Configuration, `max_frame_size`: the limit is "the largest
/// frame", in bytes, and "a bundled bridge answers a larger result with a
/// `Remote` error of type `ResultTooLarge` and stays". A bridge that
/// measured a reply in characters (JavaScript's UTF-16 units, Ruby's
/// `length`, Python's `len` of a `str`) or before JSON escaping would let
/// through a frame that is larger in bytes, which the pool takes as a
/// protocol error, and the worker is replaced. Results, failure messages,
/// chunks and `ctx.session.set` values made of [`TEXTS`] repeated
/// [`repeats`] times, in every bridge and both codecs: each either arrives
/// whole or is `ResultTooLarge`, and the same worker serves throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_of_multibyte_and_escaped_text_are_measured_in_bytes_on_the_wire() {
    for codec in CODECS {
        for (what, bridge) in every_bridge(codec) {
            let (pool, pid) = one_worker(with_session_store(Pool::builder(bridge))).await;
            let (mut whole, mut too_large) = (0, 0);
            for text in TEXTS {
                for n in repeats() {
                    let at = format!("{what}: {text:?} x {n}");
                    let outcome = multibyte_round(&pool, text, n, &at).await;
                    for o in outcome {
                        match o {
                            Outcome::Whole => whole += 1,
                            Outcome::TooLarge => too_large += 1,
                        }
                    }
                    assert_eq!(
                        pool.worker_pids(),
                        vec![pid],
                        "{at}: the worker was replaced"
                    );
                }
            }
            assert!(
                whole > 0 && too_large > 0,
                "{what}: {whole} whole, {too_large} too large"
            );
            the_same_worker(&pool, pid, &what);
            pool.shutdown().await.unwrap();
        }
    }
}

/// One result, one failure, one chunk and one host call of `text`
/// repeated `n` times, each checked, with what each ended with.
async fn multibyte_round(pool: &Pool, text: &str, n: usize, at: &str) -> Vec<Outcome> {
    let want = text.repeat(n);
    let args = json!({ "text": text, "n": n });
    let mut out = Vec::new();
    // The result.
    match call(pool, "sized", args.clone()).await {
        Ok(r) => {
            assert!(r.as_str() == Some(&want), "{at}: result not whole");
            out.push(Outcome::Whole);
        }
        Err(err) => {
            assert_eq!(remote_type(&err), "ResultTooLarge", "{at}: result: {err}");
            out.push(Outcome::TooLarge);
        }
    }
    // A failure whose message is the text: a failed reply, whatever its type.
    let err = call(pool, "fail_long", args.clone()).await.expect_err(at);
    let remote = err
        .remote()
        .unwrap_or_else(|| panic!("{at}: failure: {err:?}"));
    if remote.kind.as_deref() == Some("ResultTooLarge") {
        out.push(Outcome::TooLarge);
    } else {
        assert!(
            remote.message.contains(&want),
            "{at}: failure message cut: {err}"
        );
        out.push(Outcome::Whole);
    }
    // A chunk.
    let mut stream = stream_of(pool, "big_chunk", args.clone()).await;
    let mut items = Vec::new();
    while let Some(item) = tokio::time::timeout(HANG, stream.next())
        .await
        .unwrap_or_else(|_| panic!("{at}: the stream hung"))
    {
        items.push(item);
    }
    assert!(
        matches!(items.first(), Some(Ok(StreamItem::Chunk(c))) if c == "small"),
        "{at}: chunk: {items:?}"
    );
    match items.get(1) {
        Some(Ok(StreamItem::Chunk(c))) => {
            assert!(c.as_str() == Some(&want), "{at}: chunk not whole");
            assert!(
                matches!(items.get(2), Some(Ok(StreamItem::Done(_)))),
                "{at}"
            );
            out.push(Outcome::Whole);
        }
        Some(Err(err)) => {
            assert_eq!(remote_type(err), "ResultTooLarge", "{at}: chunk: {err}");
            out.push(Outcome::TooLarge);
        }
        other => panic!("{at}: chunk: {other:?}"),
    }
    // A host call.
    let options = CallOptions::new()
        .timeout(Duration::from_secs(30))
        .session("s1");
    let r = common::readme::call_with(pool, "set_big", args, options)
        .await
        .unwrap_or_else(|e| panic!("{at}: host call: {e:?}"));
    if r["error"].is_null() {
        out.push(Outcome::Whole);
    } else {
        assert_eq!(r["error"], "ResultTooLarge", "{at}: host call: {r}");
        out.push(Outcome::TooLarge);
    }
    out
}

/// README, Configuration, `max_frame_size`: "the largest frame either
/// way", which includes the pool's answers to a worker's host calls. A host
/// function returning `n` bytes, for every `n` from [`MARGIN`] under the
/// limit to 16 over it, called from every bridge in both codecs: the
/// handler gets the value whole, or a host-call error (the pool's
/// `EncodeError`: it cannot send that answer), and the bridge, which reads
/// with the same limit, never takes an answer the pool sent as too large
/// (it would end the worker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_host_reply_size_across_max_frame_size_is_read_whole_or_refused_unsent() {
    for codec in CODECS {
        for (what, bridge) in every_bridge(codec) {
            let builder = Pool::builder(bridge).host_function("big", |call| {
                let n = call.args["n"].as_u64().unwrap_or(0) as usize;
                async move { Ok::<_, snakepit_core::RemoteError>(Value::from("h".repeat(n))) }
            });
            let (pool, pid) = one_worker(builder).await;
            let mut largest = None;
            for n in LIMIT - MARGIN..=LIMIT + 16 {
                let r = call(&pool, "host_big", json!({ "n": n }))
                    .await
                    .unwrap_or_else(|e| panic!("{what} {n}: {e:?}"));
                if r["len"].as_u64() == Some(n as u64) {
                    largest = Some(n);
                } else {
                    assert_eq!(r, json!({"error": "EncodeError"}), "{what} {n}");
                }
            }
            let largest = largest.unwrap_or_else(|| panic!("{what}: no size went through"));
            assert!(largest < LIMIT, "{what}: {largest} bytes answered");
            the_same_worker(&pool, pid, &what);
            pool.shutdown().await.unwrap();
        }
    }
}

/// README, Troubleshooting, "`Remote` error of type `ResultTooLarge`":
/// "Raise `max_frame_size`". A result past the 64 MiB default (64 MiB and
/// 1 KiB) under a pool whose `max_frame_size` is 72 MiB: every bridge, in
/// both codecs, sends it whole (none keeps a limit of its own at the
/// default), and the worker is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_max_frame_size_lets_a_result_past_the_default_through_in_every_bridge() {
    const MIB: usize = 1 << 20;
    let long = CallOptions::new().timeout(Duration::from_secs(240));
    for codec in CODECS {
        for (what, bridge) in every_bridge(codec) {
            let pool = start(
                Pool::builder(bridge)
                    .size(1)
                    .configure(|c| c.max_frame_size = 72 * MIB),
            )
            .await;
            let pid = pool.worker_pids()[0];
            let n = 64 * MIB + 1024;
            let r = tokio::time::timeout(
                Duration::from_secs(300),
                pool.execute_with("sized", json!({ "n": n }), long.clone()),
            )
            .await
            .unwrap_or_else(|_| panic!("{what}: hung"))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(r.as_str().map(str::len), Some(n), "{what}");
            drop(r);
            the_same_worker(&pool, pid, &what);
            pool.shutdown().await.unwrap();
        }
    }
}

/// README, Configuration, `pipeline_depth`: calls are "written ahead to a
/// one-at-a-time worker that declares `pipeline` (the bundled Python
/// bridge's synchronous worker and the Ruby bridge do)", and the
/// `max_frame_size` row: a too-large result is a `ResultTooLarge` failure
/// and the worker stays. Forty-eight callers at once on one worker, every
/// third asking for a result twice the limit: each caller gets its own
/// answer (the result of its own length, or `ResultTooLarge` exactly for
/// the large ones), with calls written ahead (Python, Ruby) or run
/// together (Node.js, Python's asyncio mode), in both codecs; the worker
/// stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_results_among_calls_written_ahead_fail_only_themselves() {
    for codec in CODECS {
        for (what, bridge) in every_bridge(codec) {
            let (pool, pid) = one_worker(Pool::builder(bridge)).await;
            let calls: Vec<_> = (0..48usize)
                .map(|i| {
                    let n = if i % 3 == 0 { 2 * LIMIT + i } else { 100 + i };
                    let pool = pool.clone();
                    tokio::spawn(async move { (n, call(&pool, "sized", json!({ "n": n })).await) })
                })
                .collect();
            for c in calls {
                let (n, r) = c.await.unwrap();
                if n > LIMIT {
                    let err = r.expect_err(&what);
                    assert_eq!(remote_type(&err), "ResultTooLarge", "{what} {n}: {err}");
                } else {
                    let r = r.unwrap_or_else(|e| panic!("{what} {n}: {e:?}"));
                    assert_eq!(
                        r.as_str().map(str::len),
                        Some(n),
                        "{what}: another call's reply"
                    );
                }
            }
            the_same_worker(&pool, pid, &what);
            pool.shutdown().await.unwrap();
        }
    }
}
