//! A frame's own map, read as docs/protocol.md says it is: a map keyed by
//! field names that are strings.
//!
//! serde's derived structs take more: an array of the fields in order (so
//! `[null, 7, true]` read as a frame), and a MessagePack integer key as the
//! index of a field (so `{1: 7}` read as `{"id": 7}`). [`FrameMap`] reads
//! only a map, and hands the struct each key that is not a string as a name
//! none of its fields has, to be skipped as an unknown field is. The values
//! are read as they are: the data inside a frame keeps keys of any type.

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::{BorrowedStrDeserializer, MapAccessDeserializer};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, IntoDeserializer, MapAccess};
use serde::de::{SeqAccess, Visitor};
use serde::Deserialize;

/// `T`, a struct of a frame's fields, read from a map whose string keys
/// alone name its fields.
pub(crate) struct FrameMap<T>(pub(crate) T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for FrameMap<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(MapOnly(PhantomData)).map(FrameMap)
    }
}

/// For a field whose value is a map of named fields (a hello's
/// `capabilities`), read as [`FrameMap`] reads a frame.
pub(crate) fn named_fields<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    FrameMap::deserialize(d).map(|m| m.0)
}

struct MapOnly<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for MapOnly<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(MapAccessDeserializer::new(StrKeys(map)))
    }
}

/// The map, its keys read by [`KeySeed`].
struct StrKeys<A>(A);

impl<'de, A: MapAccess<'de>> MapAccess<'de> for StrKeys<A> {
    type Error = A::Error;

    #[inline]
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.0.next_key_seed(KeySeed(seed))
    }

    #[inline]
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.0.next_value_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

/// The name a key that is not a string is given: no field has it.
const NOT_A_NAME: &str = "\0";

/// A key as the struct's field names see it: a string as it is, any other
/// key (read whole) as [`NOT_A_NAME`].
struct KeySeed<K>(K);

impl<'de, K: DeserializeSeed<'de>> DeserializeSeed<'de> for KeySeed<K> {
    type Value = K::Value;

    #[inline]
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<K::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<K> KeySeed<K> {
    fn other<'de, E: de::Error>(self) -> Result<K::Value, E>
    where
        K: DeserializeSeed<'de>,
    {
        self.0
            .deserialize(BorrowedStrDeserializer::<E>::new(NOT_A_NAME))
    }
}

impl<'de, K: DeserializeSeed<'de>> Visitor<'de> for KeySeed<K> {
    type Value = K::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map key")
    }

    #[inline]
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<K::Value, E> {
        self.0.deserialize(BorrowedStrDeserializer::new(v))
    }
    #[inline]
    fn visit_str<E: de::Error>(self, v: &str) -> Result<K::Value, E> {
        self.0.deserialize(v.into_deserializer())
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<K::Value, E> {
        self.0.deserialize(v.into_deserializer())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<K::Value, E> {
        self.other()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<K::Value, E> {
        self.other()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<K::Value, E> {
        self.other()
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<K::Value, E> {
        self.other()
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<K::Value, E> {
        self.other()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<K::Value, E> {
        self.other()
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<K::Value, E> {
        self.other()
    }
    fn visit_unit<E: de::Error>(self) -> Result<K::Value, E> {
        self.other()
    }
    fn visit_none<E: de::Error>(self) -> Result<K::Value, E> {
        self.other()
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<K::Value, D::Error> {
        IgnoredAny::deserialize(d)?;
        self.other()
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<K::Value, D::Error> {
        IgnoredAny::deserialize(d)?;
        self.other()
    }
    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<K::Value, S::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.other()
    }
    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<K::Value, M::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        self.other()
    }
}
