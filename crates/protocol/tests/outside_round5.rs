//! Round 5 of outside review: replies in the forms a worker written for
//! the original Elixir Snakepit writes them (docs/protocol.md: "a worker
//! written for that project works unchanged"), read alike by every decoder
//! in both codecs.

use serde_json::{json, Value};
use snakepit_protocol::{
    decode_inbound, decode_response, peek_response, Inbound, RemoteError, WireCodec,
};

/// The same reply as JSON text as given and as MessagePack (its keys in the
/// text's order), each with a name for the assertion messages.
fn both(text: &str) -> Vec<(&'static str, WireCodec, Vec<u8>)> {
    let value: Value = serde_json::from_str(text).unwrap();
    vec![
        ("json", WireCodec::Json, text.as_bytes().to_vec()),
        (
            "msgpack",
            WireCodec::MsgPack,
            rmp_serde::to_vec_named(&value).unwrap(),
        ),
    ]
}

/// Routed as a reply to `id` by the routing decoder, and, where the fast
/// path recognises it, by that too (it may decline, never misroute).
fn routed(codec: &WireCodec, payload: &[u8], id: u64, success: bool, what: &str) {
    assert_eq!(
        decode_inbound(codec, payload).unwrap(),
        Inbound::Response { id, success },
        "{what}"
    );
    if let Some(peeked) = peek_response(codec, payload) {
        assert_eq!(peeked, (id, success), "{what}");
    }
}

/// docs/protocol.md, section 4: "Readers must not depend on key order";
/// section 5: the reply's `timestamp` is optional and the pool ignores it.
/// The original's Python bridge wrote `json.dumps` output (spaces after
/// `:` and `,`, non-ASCII as `\u` escapes, surrogate pairs for emoji);
/// an Elixir or `sort_keys=True` writer sorts the keys.
#[test]
fn original_replies_in_any_key_order_and_spacing_are_one_reply_in_both_codecs() {
    let successes = [
        r#"{"id": 290, "success": true, "result": {"status": "ok", "s": "h\u00e9llo \ud83d\ude00"}, "timestamp": "2026-11-27T12:24:04.051023"}"#,
        r#"{"result": {"s": "h\u00e9llo \ud83d\ude00", "status": "ok"}, "success": true, "id": 290}"#,
        r#"{"id":290,"result":{"status":"ok","s":"héllo 😀"},"success":true,"timestamp":"2026-11-27T12:24:04.051023Z"}"#,
        r#"{"success":true,"timestamp":1795782244.051023,"id":290,"result":{"status":"ok","s":"héllo 😀"}}"#,
        r#" {"id":290,"success":true,"result":{"status":"ok","s":"héllo 😀"},"timestamp":{"not":["a","string"]}} "#,
        r#"{"id":290,"success":true,"timestamp":null,"result":{"status":"ok","s":"héllo 😀"}}"#,
    ];
    for text in successes {
        for (name, codec, payload) in both(text) {
            let what = format!("{name}: {text}");
            routed(&codec, &payload, 290, true, &what);
            let result: Value = decode_response(&codec, &payload).unwrap().unwrap();
            assert_eq!(result, json!({"status": "ok", "s": "héllo 😀"}), "{what}");
        }
    }
    let failures = [
        r#"{"id": 7, "success": false, "error": "Unknown command: nope", "timestamp": "2026-11-27T12:24:04.051023"}"#,
        r#"{"error":"Unknown command: nope","id":7,"success":false,"timestamp":"2026-11-27T12:24:04.051023Z"}"#,
        r#"{"success":false,"error":"Unknown command: nope","id":7}"#,
        r#"{"timestamp":17,"success":false,"id":7,"error":"Unknown command: nope"}"#,
    ];
    for text in failures {
        for (name, codec, payload) in both(text) {
            let what = format!("{name}: {text}");
            routed(&codec, &payload, 7, false, &what);
            let err: RemoteError = decode_response::<_, Value>(&codec, &payload)
                .unwrap()
                .unwrap_err();
            assert_eq!(
                (
                    err.kind.as_deref(),
                    err.message.as_str(),
                    err.traceback.as_deref()
                ),
                (None, "Unknown command: nope", None),
                "{what}"
            );
        }
    }
}
