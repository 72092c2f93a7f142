//! A dynamically shaped value whose `CacheKey` impl delegates to the real impls, so random
//! nested inputs exercise exactly the text the library writes.

use nearcache_keys::{CacheKey, KeyWriter};
use proptest::prelude::*;

/// The type of a [`Value`]: what the decoder needs to read text back (injectivity is per type).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Shape {
    Str,
    Int,
    Bytes,
    Opt(Box<Shape>),
    Seq(Box<Shape>),
    /// A tuple or struct of these fields (one field: written as the field, like a newtype).
    Tuple(Vec<Shape>),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Value {
    Str(String),
    Int(i64),
    Bytes(Vec<u8>),
    Opt(Option<Box<Value>>),
    Seq(Vec<Value>),
    Tuple(Vec<Value>),
}

impl CacheKey for Value {
    fn write_key(&self, out: KeyWriter<'_>) {
        match self {
            Value::Str(text) => text.write_key(out),
            Value::Int(int) => int.write_key(out),
            Value::Bytes(bytes) => bytes.write_key(out),
            Value::Opt(option) => option.write_key(out),
            Value::Seq(items) => items.write_key(out),
            // What tuples and derived structs do: one field is transparent.
            Value::Tuple(fields) => match fields.as_slice() {
                [only] => only.write_key(out),
                fields => out.write_composite(|c| {
                    for field in fields {
                        c.element(field);
                    }
                }),
            },
        }
    }
}

pub(crate) fn shape() -> impl Strategy<Value = Shape> {
    let leaf = prop_oneof![Just(Shape::Str), Just(Shape::Int), Just(Shape::Bytes)];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(|s| Shape::Opt(Box::new(s))),
            inner.clone().prop_map(|s| Shape::Seq(Box::new(s))),
            prop::collection::vec(inner, 0..4).prop_map(Shape::Tuple),
        ]
    })
}

/// Where values come from: anything, or a tiny alphabet full of reserved characters, where
/// distinct values would often collide if the encoding were not injective.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Alphabet {
    Wide,
    Tiny,
}

pub(crate) fn value(shape: &Shape, alphabet: Alphabet) -> BoxedStrategy<Value> {
    match shape {
        Shape::Str => match alphabet {
            Alphabet::Wide => prop_oneof![any::<String>(), "[-()'~: a]{0,6}"]
                .prop_map(Value::Str)
                .boxed(),
            Alphabet::Tiny => "[-()'~a]{0,2}".prop_map(Value::Str).boxed(),
        },
        Shape::Int => match alphabet {
            Alphabet::Wide => any::<i64>().prop_map(Value::Int).boxed(),
            Alphabet::Tiny => (-2_i64..3).prop_map(Value::Int).boxed(),
        },
        Shape::Bytes => match alphabet {
            Alphabet::Wide => prop::collection::vec(any::<u8>(), 0..20)
                .prop_map(Value::Bytes)
                .boxed(),
            Alphabet::Tiny => prop::collection::vec(0_u8..2, 0..3)
                .prop_map(Value::Bytes)
                .boxed(),
        },
        Shape::Opt(inner) => prop::option::of(value(inner, alphabet))
            .prop_map(|o| Value::Opt(o.map(Box::new)))
            .boxed(),
        Shape::Seq(inner) => prop::collection::vec(value(inner, alphabet), 0..4)
            .prop_map(Value::Seq)
            .boxed(),
        Shape::Tuple(fields) => fields
            .iter()
            .map(|field| value(field, alphabet))
            .collect::<Vec<_>>()
            .prop_map(Value::Tuple)
            .boxed(),
    }
}
