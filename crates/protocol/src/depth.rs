//! The nesting limit: one maximum depth for both codecs, checked the same way
//! when encoding and decoding, and a non-recursive reading of a frame's
//! routing fields that works whatever the depth of its payload.

use std::cell::Cell;
use std::fmt::Display;

use serde::ser::{
    self, Serialize, SerializeMap, SerializeSeq, SerializeStruct, SerializeStructVariant,
    SerializeTuple, SerializeTupleStruct, SerializeTupleVariant, Serializer,
};

/// The deepest nesting of arrays and maps a frame may have, counting the
/// frame's own map: 127.
///
/// A scalar has depth 0, `[]` and `{"a": 1}` have depth 1, `[[1]]` depth 2.
/// A frame is itself a map, so the arguments of a request, the result of a
/// reply, the data of a chunk and the arguments of a host call may nest
/// `MAX_DEPTH - 1` = 126 levels.
///
/// The limit is the same for both codecs and in both directions:
/// [`encode_frame`](crate::encode_frame) refuses a deeper payload with
/// [`Error::TooDeep`](crate::Error::TooDeep) (`encoding: true`) before
/// anything is written, and every decoder of this crate refuses one with
/// `Error::TooDeep` (`encoding: false`) instead of recursing further, so
/// neither side can send what the other will not read and no input can
/// overflow the stack. The routing decoders ([`decode_inbound`],
/// [`decode_outbound`]) still read the routing fields of a frame whose
/// payload is too deep, without recursion, so that the frame reaches the
/// call it belongs to, which then fails on its own.
///
/// 127 is what serde_json reads (its recursion limit of 128); every bundled
/// bridge reads at least as deep.
///
/// On encoding, an enum variant with data counts as the map it is written as
/// (`{"Variant": ...}`), and a byte string as the array JSON writes it as
/// (MessagePack writes `bin`, no level).
///
/// [`decode_inbound`]: crate::decode_inbound
/// [`decode_outbound`]: crate::decode_outbound
pub const MAX_DEPTH: usize = 127;

/// The 64-bit float a reader of JSON gets for `v`: serde_json writes an
/// `f32` as its shortest decimal (`0.1`), which a reader parses as the
/// nearest 64-bit float (0.1), not as `v` widened (0.10000000149011612).
/// NaN and the infinities, which JSON cannot write, are widened as they are.
fn f32_as_json_reads_it(v: f32) -> f64 {
    if !v.is_finite() {
        return f64::from(v);
    }
    // serde_json's own text of it (ryu's shortest digits, at most 16
    // bytes); without JSON compiled in, Rust's shortest digits, which
    // differ from ryu's only when two are equally near.
    let mut buf = [0u8; 32];
    let mut at = &mut buf[..];
    #[cfg(feature = "json")]
    let written = serde_json::to_writer(&mut at, &v).is_ok();
    #[cfg(not(feature = "json"))]
    let written = std::io::Write::write_fmt(&mut at, format_args!("{v:e}")).is_ok();
    if !written {
        return f64::from(v);
    }
    let len = 32 - at.len();
    std::str::from_utf8(&buf[..len])
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(f64::from(v))
}

/// What a refusal by [`Limit`] leaves behind, so that the codec's error can be
/// told from the depth refusal that caused it.
#[derive(Default)]
pub(crate) struct Tripped(Cell<bool>);

impl Tripped {
    pub(crate) fn get(&self) -> bool {
        self.0.get()
    }
}

/// The depth reached so far on the way down a value being serialised.
#[derive(Clone, Copy)]
struct Limit<'a> {
    depth: usize,
    tripped: &'a Tripped,
    bytes_nest: bool,
    /// The serializer is serde_json's: a long string that needs no escape
    /// may be written as it is (`raw::RawString`).
    #[cfg_attr(not(feature = "json"), allow(dead_code))]
    raw_json: bool,
}

impl<'a> Limit<'a> {
    #[inline]
    fn enter<E: ser::Error>(self, levels: usize) -> Result<Limit<'a>, E> {
        let depth = self.depth + levels;
        if depth > MAX_DEPTH {
            self.tripped.0.set(true);
            return Err(E::custom(format_args!(
                "payload nests deeper than the maximum of {MAX_DEPTH} levels"
            )));
        }
        Ok(Limit { depth, ..self })
    }
}

/// `value`, serialised through a serializer that counts the nesting depth and
/// stops past [`MAX_DEPTH`]. `bytes_nest`: byte strings are written as arrays.
pub(crate) struct Limited<'a, T: ?Sized> {
    value: &'a T,
    limit: Limit<'a>,
}

impl<'a, T: ?Sized> Limited<'a, T> {
    pub(crate) fn new(value: &'a T, tripped: &'a Tripped, bytes_nest: bool) -> Self {
        Limited {
            value,
            limit: Limit {
                depth: 0,
                tripped,
                bytes_nest,
                raw_json: false,
            },
        }
    }

    #[cfg(feature = "json")]
    /// `value` found `depth` levels down (a field of a struct at depth 0
    /// is at depth 1), for serde_json's serializer only.
    pub(crate) fn json_at(value: &'a T, tripped: &'a Tripped, depth: usize) -> Self {
        Limited {
            value,
            limit: Limit {
                depth,
                tripped,
                bytes_nest: true,
                raw_json: true,
            },
        }
    }
}

impl<T: Serialize + ?Sized> Serialize for Limited<'_, T> {
    #[inline]
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(LimitSer {
            inner: s,
            limit: self.limit,
        })
    }
}

struct LimitSer<'a, S> {
    inner: S,
    limit: Limit<'a>,
}

/// A compound (sequence, map, struct...) of the inner serializer whose
/// elements are serialised one level deeper.
pub(crate) struct Compound<'a, C> {
    inner: C,
    limit: Limit<'a>,
}

impl<'a, C> Compound<'a, C> {
    #[inline]
    fn wrap<'v, T: ?Sized>(&self, value: &'v T) -> Limited<'v, T>
    where
        'a: 'v,
    {
        Limited {
            value,
            limit: self.limit,
        }
    }

    /// A map's key: always through the serializer (a raw string is no key).
    #[inline]
    fn wrap_key<'v, T: ?Sized>(&self, key: &'v T) -> Limited<'v, T>
    where
        'a: 'v,
    {
        Limited {
            value: key,
            limit: Limit {
                raw_json: false,
                ..self.limit
            },
        }
    }
}

macro_rules! forward {
    ($($method:ident($t:ty);)*) => {$(
        #[inline]
        fn $method(self, v: $t) -> Result<S::Ok, S::Error> {
            self.inner.$method(v)
        }
    )*};
}

impl<'a, S: Serializer> Serializer for LimitSer<'a, S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = Compound<'a, S::SerializeSeq>;
    type SerializeTuple = Compound<'a, S::SerializeTuple>;
    type SerializeTupleStruct = Compound<'a, S::SerializeTupleStruct>;
    type SerializeTupleVariant = Compound<'a, S::SerializeTupleVariant>;
    type SerializeMap = Compound<'a, S::SerializeMap>;
    type SerializeStruct = Compound<'a, S::SerializeStruct>;
    type SerializeStructVariant = Compound<'a, S::SerializeStructVariant>;

    forward! {
        serialize_bool(bool);
        serialize_i8(i8);
        serialize_i16(i16);
        serialize_i32(i32);
        serialize_i64(i64);
        serialize_u8(u8);
        serialize_u16(u16);
        serialize_u32(u32);
        serialize_u64(u64);
        serialize_f64(f64);
        serialize_char(char);
    }

    // The types below have no MessagePack type of their own, and rmp-serde
    // writes them as something else than JSON does (`i128`/`u128` as 16
    // bytes of `bin`, `f32` as a 32-bit float, a unit struct as `[]`). A
    // worker is given what JSON gives it: the integer, the float JSON's
    // shortest decimal reads as, `null`. (`bytes_nest` is false for
    // MessagePack alone.)

    #[inline]
    fn serialize_i128(self, v: i128) -> Result<S::Ok, S::Error> {
        if let Ok(v) = i64::try_from(v) {
            return self.inner.serialize_i64(v);
        }
        if let Ok(v) = u64::try_from(v) {
            return self.inner.serialize_u64(v);
        }
        if self.limit.bytes_nest {
            return self.inner.serialize_i128(v);
        }
        Err(ser::Error::custom(format_args!(
            "the integer {v} is outside what MessagePack holds (-2^63 to 2^64 - 1): send it as a string"
        )))
    }

    #[inline]
    fn serialize_u128(self, v: u128) -> Result<S::Ok, S::Error> {
        if let Ok(v) = u64::try_from(v) {
            return self.inner.serialize_u64(v);
        }
        if self.limit.bytes_nest {
            return self.inner.serialize_u128(v);
        }
        Err(ser::Error::custom(format_args!(
            "the integer {v} is outside what MessagePack holds (-2^63 to 2^64 - 1): send it as a string"
        )))
    }

    #[inline]
    fn serialize_f32(self, v: f32) -> Result<S::Ok, S::Error> {
        if self.limit.bytes_nest {
            return self.inner.serialize_f32(v);
        }
        self.inner.serialize_f64(f32_as_json_reads_it(v))
    }

    #[inline]
    fn serialize_unit_struct(self, name: &'static str) -> Result<S::Ok, S::Error> {
        if self.limit.bytes_nest {
            return self.inner.serialize_unit_struct(name);
        }
        self.inner.serialize_unit()
    }

    #[inline]
    fn serialize_str(self, v: &str) -> Result<S::Ok, S::Error> {
        #[cfg(feature = "json")]
        if self.limit.raw_json
            && v.len() >= raw::MIN_LEN
            && !raw::needs_escape(v.as_bytes())
            && raw::works()
        {
            return raw::RawString::quote(v).serialize(self.inner);
        }
        self.inner.serialize_str(v)
    }

    #[inline]
    fn serialize_bytes(self, v: &[u8]) -> Result<S::Ok, S::Error> {
        if self.limit.bytes_nest {
            self.limit.enter::<S::Error>(1)?;
        }
        self.inner.serialize_bytes(v)
    }

    #[inline]
    fn serialize_none(self) -> Result<S::Ok, S::Error> {
        self.inner.serialize_none()
    }

    #[inline]
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<S::Ok, S::Error> {
        self.inner.serialize_some(&Limited {
            value,
            limit: self.limit,
        })
    }

    #[inline]
    fn serialize_unit(self) -> Result<S::Ok, S::Error> {
        self.inner.serialize_unit()
    }

    #[inline]
    fn serialize_unit_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
    ) -> Result<S::Ok, S::Error> {
        self.inner.serialize_unit_variant(name, index, variant)
    }

    #[inline]
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        self.inner.serialize_newtype_struct(
            name,
            &Limited {
                value,
                limit: self.limit,
            },
        )
    }

    #[inline]
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        // Written as `{variant: value}`.
        let limit = self.limit.enter::<S::Error>(1)?;
        self.inner
            .serialize_newtype_variant(name, index, variant, &Limited { value, limit })
    }

    #[inline]
    fn serialize_seq(self, len: Option<usize>) -> Result<Self::SerializeSeq, S::Error> {
        let limit = self.limit.enter::<S::Error>(1)?;
        Ok(Compound {
            inner: self.inner.serialize_seq(len)?,
            limit,
        })
    }

    #[inline]
    fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, S::Error> {
        let limit = self.limit.enter::<S::Error>(1)?;
        Ok(Compound {
            inner: self.inner.serialize_tuple(len)?,
            limit,
        })
    }

    #[inline]
    fn serialize_tuple_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleStruct, S::Error> {
        let limit = self.limit.enter::<S::Error>(1)?;
        Ok(Compound {
            inner: self.inner.serialize_tuple_struct(name, len)?,
            limit,
        })
    }

    #[inline]
    fn serialize_tuple_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, S::Error> {
        // Written as `{variant: [...]}`.
        let limit = self.limit.enter::<S::Error>(2)?;
        Ok(Compound {
            inner: self
                .inner
                .serialize_tuple_variant(name, index, variant, len)?,
            limit,
        })
    }

    #[inline]
    fn serialize_map(self, len: Option<usize>) -> Result<Self::SerializeMap, S::Error> {
        let limit = self.limit.enter::<S::Error>(1)?;
        Ok(Compound {
            inner: self.inner.serialize_map(len)?,
            limit,
        })
    }

    #[inline]
    fn serialize_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStruct, S::Error> {
        let limit = self.limit.enter::<S::Error>(1)?;
        // A `RawValue` of the caller's: its text is written as it is.
        #[cfg(feature = "json")]
        let limit = Limit {
            raw_json: limit.raw_json && name != raw::TOKEN,
            ..limit
        };
        Ok(Compound {
            inner: self.inner.serialize_struct(name, len)?,
            limit,
        })
    }

    #[inline]
    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, S::Error> {
        // Written as `{variant: {...}}`.
        let limit = self.limit.enter::<S::Error>(2)?;
        Ok(Compound {
            inner: self
                .inner
                .serialize_struct_variant(name, index, variant, len)?,
            limit,
        })
    }

    #[inline]
    fn collect_str<T: Display + ?Sized>(self, value: &T) -> Result<S::Ok, S::Error> {
        self.inner.collect_str(value)
    }

    #[inline]
    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

impl<C: SerializeSeq> SerializeSeq for Compound<'_, C> {
    type Ok = C::Ok;
    type Error = C::Error;
    #[inline]
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), C::Error> {
        let v = self.wrap(value);
        self.inner.serialize_element(&v)
    }
    #[inline]
    fn end(self) -> Result<C::Ok, C::Error> {
        self.inner.end()
    }
}

impl<C: SerializeTuple> SerializeTuple for Compound<'_, C> {
    type Ok = C::Ok;
    type Error = C::Error;
    #[inline]
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), C::Error> {
        let v = self.wrap(value);
        self.inner.serialize_element(&v)
    }
    #[inline]
    fn end(self) -> Result<C::Ok, C::Error> {
        self.inner.end()
    }
}

impl<C: SerializeTupleStruct> SerializeTupleStruct for Compound<'_, C> {
    type Ok = C::Ok;
    type Error = C::Error;
    #[inline]
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), C::Error> {
        let v = self.wrap(value);
        self.inner.serialize_field(&v)
    }
    #[inline]
    fn end(self) -> Result<C::Ok, C::Error> {
        self.inner.end()
    }
}

impl<C: SerializeTupleVariant> SerializeTupleVariant for Compound<'_, C> {
    type Ok = C::Ok;
    type Error = C::Error;
    #[inline]
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), C::Error> {
        let v = self.wrap(value);
        self.inner.serialize_field(&v)
    }
    #[inline]
    fn end(self) -> Result<C::Ok, C::Error> {
        self.inner.end()
    }
}

impl<C: SerializeMap> SerializeMap for Compound<'_, C> {
    type Ok = C::Ok;
    type Error = C::Error;
    #[inline]
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), C::Error> {
        let k = self.wrap_key(key);
        self.inner.serialize_key(&k)
    }
    #[inline]
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), C::Error> {
        let v = self.wrap(value);
        self.inner.serialize_value(&v)
    }
    #[inline]
    fn serialize_entry<K: Serialize + ?Sized, V: Serialize + ?Sized>(
        &mut self,
        key: &K,
        value: &V,
    ) -> Result<(), C::Error> {
        let (k, v) = (self.wrap_key(key), self.wrap(value));
        self.inner.serialize_entry(&k, &v)
    }
    #[inline]
    fn end(self) -> Result<C::Ok, C::Error> {
        self.inner.end()
    }
}

impl<C: SerializeStruct> SerializeStruct for Compound<'_, C> {
    type Ok = C::Ok;
    type Error = C::Error;
    #[inline]
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), C::Error> {
        let v = self.wrap(value);
        self.inner.serialize_field(key, &v)
    }
    #[inline]
    fn skip_field(&mut self, key: &'static str) -> Result<(), C::Error> {
        self.inner.skip_field(key)
    }
    #[inline]
    fn end(self) -> Result<C::Ok, C::Error> {
        self.inner.end()
    }
}

impl<C: SerializeStructVariant> SerializeStructVariant for Compound<'_, C> {
    type Ok = C::Ok;
    type Error = C::Error;
    #[inline]
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), C::Error> {
        let v = self.wrap(value);
        self.inner.serialize_field(key, &v)
    }
    #[inline]
    fn skip_field(&mut self, key: &'static str) -> Result<(), C::Error> {
        self.inner.skip_field(key)
    }
    #[inline]
    fn end(self) -> Result<C::Ok, C::Error> {
        self.inner.end()
    }
}

/// Long strings written to JSON without serde_json's escaping, which looks
/// at each byte in turn (about ten instructions a byte: a megabyte argument
/// cost the host more than the worker's whole call). A string with nothing
/// to escape (no control character, `"` or `\\`) is checked a block at a
/// time, quoted, and handed to serde_json as a raw value, written as it is.
#[cfg(feature = "json")]
mod raw {
    use serde::ser::{Serialize, SerializeStruct, Serializer};

    /// How serde_json's serializer recognises a raw value (the name its own
    /// `RawValue` serialises under, with the `raw_value` feature). Private
    /// to serde_json: [`works`] checks, once, that it is still understood.
    pub(super) const TOKEN: &str = "$serde_json::private::RawValue";

    /// Shorter strings go through serde_json: the check and the copy would
    /// cost more than they save.
    pub(super) const MIN_LEN: usize = 1024;

    /// A JSON string literal, quotes included, to be written as it is.
    pub(super) struct RawString(String);

    impl RawString {
        pub(super) fn quote(s: &str) -> Self {
            let mut quoted = String::with_capacity(s.len() + 2);
            quoted.push('"');
            quoted.push_str(s);
            quoted.push('"');
            RawString(quoted)
        }
    }

    impl Serialize for RawString {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut raw = s.serialize_struct(TOKEN, 1)?;
            raw.serialize_field(TOKEN, self.0.as_str())?;
            raw.end()
        }
    }

    /// Whether JSON must escape any of these bytes. Whole blocks are
    /// looked at without a branch per byte, which the compiler turns into
    /// vector compares.
    pub(super) fn needs_escape(bytes: &[u8]) -> bool {
        bytes.chunks(4096).any(|block| {
            block.iter().fold(false, |any, &b| {
                any | (b < 0x20) | (b == b'"') | (b == b'\\')
            })
        })
    }

    /// Whether this serde_json writes a [`RawString`] as it is (and not as
    /// a map named [`TOKEN`]). Asked for each long string (a few hundred
    /// instructions against its thousand bytes or more): the crate keeps
    /// no global state.
    pub(super) fn works() -> bool {
        let mut out = [0u8; 8];
        let mut w = &mut out[..];
        serde_json::to_writer(&mut w, &RawString::quote("ab")).is_ok()
            && w.len() == 4
            && out[..4] == *b"\"ab\""
    }
}

#[cfg(all(test, feature = "json"))]
mod tests {
    #[test]
    fn this_serde_json_writes_raw_strings_as_they_are() {
        // Else every long string silently takes the slow path.
        assert!(super::raw::works());
    }

    #[test]
    fn the_escape_check_finds_each_byte_that_needs_one() {
        use super::raw::needs_escape;
        assert!(!needs_escape("plain text, é漢字🎉 and \u{7f}".as_bytes()));
        for b in (0u8..0x20).chain([b'"', b'\\']) {
            for at in [0, 7, 4095, 4096, 5000] {
                let mut s = vec![b'a'; 5001];
                s[at] = b;
                assert!(needs_escape(&s), "byte {b:#x} at {at}");
            }
        }
    }
}
