//! Reading the top-level fields of a frame without recursion, whatever the
//! depth of the values in it: the routing decoders' way through a frame whose
//! payload is deeper than [`MAX_DEPTH`](crate::MAX_DEPTH).
//!
//! Only MessagePack needs it: rmp-serde skips an ignored value by recursing
//! (and so stops at the depth limit), while serde_json skips one with a loop
//! and no limit, so the routing decode of JSON reads a deep frame as it is.
//! The scanner checks the structure of the whole payload as it goes, with a
//! counter of the values still to skip: linear time, no allocation.

use crate::{Error, Result};

/// One top-level field's value, its bytes: a container (only its kind
/// matters to the router) or a scalar, to be decoded by the codec.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Raw<'p> {
    Container(&'p [u8]),
    Scalar(&'p [u8]),
}

impl<'p> Raw<'p> {
    /// The value's bytes, whatever it is.
    pub(crate) fn bytes(self) -> &'p [u8] {
        match self {
            Raw::Container(b) | Raw::Scalar(b) => b,
        }
    }
}

/// The values of the fields `names` of the map `payload`, in `codec`'s
/// encoding; `None` if this codec cannot be skimmed.
pub(crate) fn fields<'p, const N: usize>(
    codec: &str,
    payload: &'p [u8],
    names: [&str; N],
) -> Option<Result<[Option<Raw<'p>>; N]>> {
    let mut out = [None; N];
    let mut put = |key: &str, raw: Raw<'p>| -> Result<()> {
        if let Some(i) = names.iter().position(|n| *n == key) {
            if out[i].is_some() {
                return Err(Error::WrongType {
                    field: "payload",
                    expected: "a map without duplicate fields",
                });
            }
            out[i] = Some(raw);
        }
        Ok(())
    };
    let done = match codec {
        "msgpack" => msgpack::fields(payload, &mut put),
        _ => return None,
    };
    Some(done.map(|()| out))
}

/// The map `payload` with only its fields `names`, in `codec`'s encoding;
/// `None` if this codec cannot be skimmed. For a decoder that cannot skip
/// the other fields: rmp-serde skips an ignored value by recursing, so a
/// field no reader knows, nested past [`MAX_DEPTH`](crate::MAX_DEPTH),
/// fails the whole decode, where serde_json skips it. Read without it, the
/// frame decodes in MessagePack as it does in JSON.
pub(crate) fn only<const N: usize>(
    codec: &str,
    payload: &[u8],
    names: [&str; N],
) -> Option<Result<Vec<u8>>> {
    let raws = match fields(codec, payload, names)? {
        Ok(raws) => raws,
        Err(e) => return Some(Err(e)),
    };
    let kept: Vec<(&str, &[u8])> = names
        .iter()
        .zip(raws)
        .filter_map(|(name, raw)| Some((*name, raw?.bytes())))
        .collect();
    Some(Ok(msgpack::map(&kept)))
}

fn not_a_map() -> Error {
    Error::WrongType {
        field: "payload",
        expected: "a map",
    }
}

pub(crate) mod msgpack {
    use super::{not_a_map, Raw};
    use crate::{Error, Result};

    fn invalid(what: &str, at: usize) -> Error {
        Error::InvalidPayload {
            codec: "msgpack",
            detail: format!("{what} at byte {at}"),
        }
    }

    fn be(p: &[u8], i: usize, n: usize) -> Result<u64> {
        let bytes = i
            .checked_add(n)
            .and_then(|end| p.get(i..end))
            .ok_or_else(|| invalid("unexpected end of payload", i))?;
        Ok(bytes.iter().fold(0, |acc, b| acc << 8 | u64::from(*b)))
    }

    /// What one marker at `i` is: its header length, the payload bytes that
    /// follow the header, and how many values it contains (an array of `n`
    /// contains `n`, a map `2n`).
    fn marker(p: &[u8], i: usize) -> Result<(usize, u64, u64)> {
        let m = *p
            .get(i)
            .ok_or_else(|| invalid("unexpected end of payload", i))?;
        Ok(match m {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (1, 0, 0),
            0x80..=0x8f => (1, 0, 2 * u64::from(m & 0x0f)),
            0x90..=0x9f => (1, 0, u64::from(m & 0x0f)),
            0xa0..=0xbf => (1, u64::from(m & 0x1f), 0),
            0xc1 => return Err(invalid("reserved marker 0xc1", i)),
            0xc4 | 0xd9 => (2, be(p, i + 1, 1)?, 0),
            0xc5 | 0xda => (3, be(p, i + 1, 2)?, 0),
            0xc6 | 0xdb => (5, be(p, i + 1, 4)?, 0),
            0xc7 => (3, be(p, i + 1, 1)?, 0),
            0xc8 => (4, be(p, i + 1, 2)?, 0),
            0xc9 => (6, be(p, i + 1, 4)?, 0),
            0xca => (1, 4, 0),
            0xcb => (1, 8, 0),
            0xcc | 0xd0 => (1, 1, 0),
            0xcd | 0xd1 => (1, 2, 0),
            0xce | 0xd2 => (1, 4, 0),
            0xcf | 0xd3 => (1, 8, 0),
            0xd4 => (2, 1, 0),
            0xd5 => (2, 2, 0),
            0xd6 => (2, 4, 0),
            0xd7 => (2, 8, 0),
            0xd8 => (2, 16, 0),
            0xdc => (3, 0, be(p, i + 1, 2)?),
            0xdd => (5, 0, be(p, i + 1, 4)?),
            0xde => (3, 0, 2 * be(p, i + 1, 2)?),
            0xdf => (5, 0, 2 * be(p, i + 1, 4)?),
        })
    }

    /// The end of the value at `i`, without recursion: a count of the values
    /// still to skip, each of which needs at least a byte, so that a huge
    /// declared length fails as soon as it cannot fit.
    pub(crate) fn value(p: &[u8], mut i: usize) -> Result<usize> {
        let mut pending: u64 = 1;
        while pending > 0 {
            pending -= 1;
            let (header, bytes, contains) = marker(p, i)?;
            let end = (i as u64)
                .saturating_add(header as u64)
                .saturating_add(bytes);
            if end > p.len() as u64 {
                return Err(invalid("a length beyond the end of the payload", i));
            }
            i = end as usize;
            pending += contains;
            if pending > (p.len() - i) as u64 {
                return Err(invalid("more elements declared than bytes left", i));
            }
        }
        Ok(i)
    }

    /// A map of `entries`, each a field name (short: a protocol's) and
    /// its value's bytes.
    pub(super) fn map(entries: &[(&str, &[u8])]) -> Vec<u8> {
        debug_assert!(entries.len() < 16 && entries.iter().all(|(k, _)| k.len() < 32));
        let size = entries
            .iter()
            .map(|(k, v)| 1 + k.len() + v.len())
            .sum::<usize>();
        let mut out = Vec::with_capacity(1 + size);
        out.push(0x80 | entries.len() as u8);
        for (key, value) in entries {
            out.push(0xa0 | key.len() as u8);
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(value);
        }
        out
    }

    pub(super) fn fields<'p>(
        p: &'p [u8],
        put: &mut dyn FnMut(&str, Raw<'p>) -> Result<()>,
    ) -> Result<()> {
        let (header, _, contains) = marker(p, 0)?;
        if !matches!(p[0], 0x80..=0x8f | 0xde | 0xdf) {
            value(p, 0)?;
            return Err(not_a_map());
        }
        let mut i = header;
        for _ in 0..contains / 2 {
            let key_at = i;
            i = value(p, i)?;
            let (kh, _, _) = marker(p, key_at)?;
            let is_str = matches!(p[key_at], 0xa0..=0xbf | 0xd9 | 0xda | 0xdb);
            let name = if is_str {
                std::str::from_utf8(&p[key_at + kh..i]).ok()
            } else {
                None
            };
            let at = i;
            i = value(p, i)?;
            let raw = match p[at] {
                0x80..=0x9f | 0xdc..=0xdf => Raw::Container(&p[at..i]),
                _ => Raw::Scalar(&p[at..i]),
            };
            if let Some(name) = name {
                put(name, raw)?;
            }
        }
        // Like rmp-serde, bytes after the map are not looked at.
        Ok(())
    }
}
