//! A second way to read a MessagePack payload whose map keys are not all
//! strings, for readers that take only string keys (`serde_json::Value`).
//!
//! MessagePack keys may be of any type: a worker's `{1: "a"}` arrives keyed
//! by the integer 1, and the host writes a typed `HashMap<u32, _>` that way
//! too. The payload is read as a `Value` whose keys are written as JSON
//! writes them (`"1"`), and the reader's type is then read from that. Host
//! calls use it: arguments the pool cannot read would make it replace the
//! worker, for a frame that is valid.

use std::fmt;

use serde::de::{DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Number, Value};

use crate::Codec;

/// `payload` read as `T` with its map keys made strings, when `codec` is
/// MessagePack and that works; `None` otherwise (the caller keeps the error
/// of its first decode).
pub(super) fn decode<C: Codec + ?Sized, T: DeserializeOwned>(
    codec: &C,
    payload: &[u8],
) -> Option<T> {
    if codec.name() != "msgpack" {
        return None;
    }
    let Keyed(value) = codec.decode(payload).ok()?;
    T::deserialize(value).ok()
}

/// A value whose map keys, at every depth, are strings.
struct Keyed(Value);

impl<'de> Deserialize<'de> for Keyed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor).map(Keyed)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value JSON can hold")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        // A NaN or an infinity is refused rather than read as `null`, so
        // that a reader that refuses them (the pool's host calls) is not
        // handed a `null` on this second way; the caller keeps the error of
        // its first decode.
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom(format!("{v} is not a JSON number")))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Keyed::deserialize(d).map(|k| k.0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(Keyed(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let Keyed(v) = map.next_value()?;
            // Two keys that read as one (1 and "1", or a field given twice)
            // are not read over each other.
            if out.insert(key, v).is_some() {
                return Err(serde::de::Error::custom(
                    "two map keys read as the same string",
                ));
            }
        }
        Ok(Value::Object(out))
    }
}

/// A map key as the string JSON has for it: a string as it is, an integer
/// or float in decimal, `true`, `false` and `null` by name, bytes that are
/// UTF-8 as their text. A map or array as a key is refused.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map key JSON can write as a string")
    }
    fn visit_bool<E>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<String, E> {
        Number::from_f64(v)
            .map(|n| n.to_string())
            .ok_or_else(|| E::custom("a map key that is not a finite number"))
    }
    fn visit_str<E>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
    fn visit_string<E>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<String, E> {
        std::str::from_utf8(v)
            .map(str::to_owned)
            .map_err(|_| E::custom("a map key of bytes that are not UTF-8"))
    }
    fn visit_unit<E>(self) -> Result<String, E> {
        Ok("null".to_owned())
    }
    fn visit_none<E>(self) -> Result<String, E> {
        Ok("null".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use crate::{Json, MsgPack};

    #[test]
    fn keys_of_any_scalar_type_become_the_strings_json_has() {
        // {1: "a", -2: {true: [null], "k": 1.5}, b"x": nil, nil: 0}
        let payload =
            b"\x84\x01\xa1a\xfe\x82\xc3\x91\xc0\xa1k\xcb\x3f\xf8\0\0\0\0\0\0\xc4\x01x\xc0\xc0\x00";
        let value: Value = super::decode(&MsgPack, payload).unwrap();
        assert_eq!(
            value,
            json!({"1": "a", "-2": {"true": [null], "k": 1.5}, "x": null, "null": 0})
        );
    }

    #[test]
    fn a_map_as_a_key_a_key_twice_or_another_codec_is_left_to_the_first_error() {
        assert_eq!(super::decode::<_, Value>(&MsgPack, b"\x81\x80\x01"), None);
        assert_eq!(
            super::decode::<_, Value>(&MsgPack, b"\x82\x01\x01\xa11\x02"),
            None
        );
        assert_eq!(super::decode::<_, Value>(&Json, br#"{"1":"a"}"#), None);
    }
}
