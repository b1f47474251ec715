//! The reader's fast path: a reply's id and outcome from its first bytes,
//! for the shapes in which the built-in codecs write replies
//! ([`Codec::peek_response`] of [`Json`](crate::Json) and
//! [`MsgPack`](crate::MsgPack)).

use crate::Codec;

/// The routing part of a reply, read from its first bytes only, when the
/// frame begins the way every bundled bridge writes replies: a map whose
/// first key is `id` (an unsigned integer) and whose second is `success` (a
/// boolean). `None` means "not sure": call [`decode_inbound`](crate::decode_inbound).
///
/// This is the reader's fast path: it costs tens of instructions instead of
/// a scan of the whole payload. It does not validate the rest of the frame,
/// so whoever receives the frame must decode it with
/// [`decode_response`](crate::decode_response),
/// which does. A frame from a worker that has a `success` key is a reply
/// whatever else it holds, its `type` included (docs/protocol.md, section
/// 5; chunks, hellos and host calls have no `success`), and
/// [`decode_inbound`](crate::decode_inbound) says so too.
///
/// ```
/// use snakepit_protocol::{peek_response, WireCodec};
/// let frame = br#"{"id":42,"success":true,"result":{"status":"ok"}}"#;
/// assert_eq!(peek_response(&WireCodec::Json, frame), Some((42, true)));
/// assert_eq!(peek_response(&WireCodec::Json, br#"{"type":"chunk","id":1}"#), None);
/// ```
pub fn peek_response<C: Codec + ?Sized>(codec: &C, payload: &[u8]) -> Option<(u64, bool)> {
    codec.peek_response(payload)
}

/// A reply as serde_json writes it: `{"id":<digits>,"success":<bool>` then
/// `,` or `}`.
#[cfg(feature = "json")]
pub(crate) fn json(p: &[u8]) -> Option<(u64, bool)> {
    let rest = p.strip_prefix(b"{\"id\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 20 || (digits > 1 && rest[0] == b'0') {
        return None;
    }
    // At most 20 digits: folded with overflow checks, as `u64::from_str`.
    let id = rest[..digits].iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })?;
    let rest = rest[digits..].strip_prefix(b",\"success\":")?;
    let (success, rest) = if let Some(r) = rest.strip_prefix(b"true") {
        (true, r)
    } else {
        (false, rest.strip_prefix(b"false")?)
    };
    matches!(rest.first(), Some(b',' | b'}')).then_some((id, success))
}

/// The bytes of the result of a successful reply written as
/// `{"id":<digits>,"success":true,"result":<value>}` and nothing after:
/// `<value>`, not yet checked (the caller decodes it).
#[cfg(feature = "json")]
pub(crate) fn json_result(p: &[u8]) -> Option<&[u8]> {
    const RESULT: &[u8] = b",\"success\":true,\"result\":";
    let rest = p.strip_prefix(b"{\"id\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    // A leading zero (`07`) is not JSON: the full decode says so.
    if digits == 0 || digits > 20 || (digits > 1 && rest[0] == b'0') {
        return None;
    }
    let value = rest[digits..].strip_prefix(RESULT)?.strip_suffix(b"}")?;
    // The whole reply's nesting limit counts the reply's own map: a result
    // that may nest near it is decoded in full, so that both paths agree on
    // what is too deep. Each level takes two bytes; a longer value has its
    // opening brackets counted (strings included: a bound from above).
    let limit = crate::MAX_DEPTH - 2;
    if value.len() >= 2 * limit && opens_at_least(value, limit) {
        return None;
    }
    Some(value)
}

/// Whether `bytes` holds at least `n` of `{` and `[`, counted in runs of
/// 255 with byte-wide sums the compiler vectorises.
#[cfg(feature = "json")]
fn opens_at_least(bytes: &[u8], n: usize) -> bool {
    let mut count = 0;
    for run in bytes.chunks(255) {
        let opens = run
            .iter()
            .fold(0u8, |c, &b| c + u8::from(b == b'{' || b == b'['));
        count += usize::from(opens);
        if count >= n {
            return true;
        }
    }
    false
}

/// A reply as rmp-serde writes it with struct maps: a fixmap whose first
/// key is `id` (a positive integer) and whose second is `success`.
#[cfg(feature = "msgpack")]
pub(crate) fn msgpack(p: &[u8]) -> Option<(u64, bool)> {
    let (&map, rest) = p.split_first()?;
    if !(0x82..=0x8f).contains(&map) {
        return None;
    }
    let rest = rest.strip_prefix(b"\xa2id")?;
    let (&marker, rest) = rest.split_first()?;
    let (id, rest) = match marker {
        0x00..=0x7f => (u64::from(marker), rest),
        0xcc => (u64::from(*rest.first()?), rest.get(1..)?),
        0xcd => (
            u64::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?)),
            rest.get(2..)?,
        ),
        0xce => (
            u64::from(u32::from_be_bytes(rest.get(..4)?.try_into().ok()?)),
            rest.get(4..)?,
        ),
        0xcf => (
            u64::from_be_bytes(rest.get(..8)?.try_into().ok()?),
            rest.get(8..)?,
        ),
        _ => return None,
    };
    let rest = rest.strip_prefix(b"\xa7success")?;
    match rest.first()? {
        0xc3 => Some((id, true)),
        0xc2 => Some((id, false)),
        _ => None,
    }
}

#[cfg(all(test, feature = "json"))]
mod tests {
    use super::{json, json_result};

    #[test]
    fn a_reply_id_is_read_as_u64_reads_it() {
        let id = |digits: &str| json(format!(r#"{{"id":{digits},"success":true}}"#).as_bytes());
        assert_eq!(id("0"), Some((0, true)));
        assert_eq!(id("42"), Some((42, true)));
        assert_eq!(id("18446744073709551615"), Some((u64::MAX, true)));
        // Past u64, a leading zero: not the usual shape.
        assert_eq!(id("18446744073709551616"), None);
        assert_eq!(id("99999999999999999999"), None);
        assert_eq!(id("07"), None);
    }

    #[test]
    fn the_result_of_a_usual_reply_is_found_where_it_lies() {
        let frame = br#"{"id":7,"success":true,"result":{"status":"ok","n":[1,2]}}"#;
        assert_eq!(
            json_result(frame),
            Some(&br#"{"status":"ok","n":[1,2]}"#[..])
        );
        assert_eq!(
            json_result(br#"{"id":7,"success":true,"result":null}"#),
            Some(&b"null"[..])
        );
        // Not that shape: the full decode handles them.
        for other in [
            &br#"{"id":7,"success":false,"error":{"message":"x"}}"#[..],
            br#"{"success":true,"id":7,"result":1}"#,
            br#"{"id":7,"success":true}"#,
            br#"{"id":,"success":true,"result":1}"#,
            br#"{"id":7,"success":true,"result":1"#,
        ] {
            assert_eq!(
                json_result(other),
                None,
                "{}",
                String::from_utf8_lossy(other)
            );
        }
        let deep = format!(
            r#"{{"id":1,"success":true,"result":{}{}}}"#,
            "[".repeat(crate::MAX_DEPTH),
            "]".repeat(crate::MAX_DEPTH)
        );
        assert_eq!(
            json_result(deep.as_bytes()),
            None,
            "a deep result takes the full path"
        );
    }
}
