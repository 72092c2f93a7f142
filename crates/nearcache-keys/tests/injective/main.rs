//! Injectivity of key text, proven by decoding: random nested values (strings with arbitrary
//! unicode and every separator, integers, bytes, options, sequences, tuples) are written with
//! the real impls and read back by a strict decoder that knows only their type.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod decode;
mod model;

use std::collections::HashMap;

use nearcache_keys::{CacheKey, Key, KeyBuilder};
use proptest::prelude::*;

use decode::{decode_args, decode_atom, decode_top};
use model::{Alphabet, Shape, Value, shape, value};

fn shape_and_value(alphabet: Alphabet) -> impl Strategy<Value = (Shape, Value)> {
    shape().prop_flat_map(move |s| {
        let v = value(&s, alphabet);
        (Just(s), v)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn top_level_text_decodes_to_the_value((shape, value) in shape_and_value(Alphabet::Wide)) {
        let text = value.key_text();
        let key = Key::of(&value);
        prop_assert_eq!(key.as_str(), text.as_str());
        let decoded = decode_top(&shape, &text);
        prop_assert_eq!(decoded, Ok(value), "text {:?}", text);
    }

    #[test]
    fn tiny_alphabet_values_decode_too((shape, value) in shape_and_value(Alphabet::Tiny)) {
        let text = value.key_text();
        prop_assert_eq!(decode_top(&shape, &text), Ok(value), "text {:?}", text);
    }

    #[test]
    fn argument_lists_decode_to_the_arguments(
        (shapes, values) in prop::collection::vec(shape(), 0..4).prop_flat_map(|shapes| {
            let values: Vec<_> = shapes.iter().map(|s| value(s, Alphabet::Wide)).collect();
            (Just(shapes), values)
        })
    ) {
        let mut builder = KeyBuilder::new("a::Service<u8>", "get-by");
        for value in &values {
            builder.arg(value);
        }
        let key = builder.build();
        let decoded = decode_args("a::Service<u8>:'get-by'", &shapes, key.as_str());
        prop_assert_eq!(decoded, Ok(values), "text {:?}", key.as_str());
    }

    /// Collision hunt: many values of one type over a tiny alphabet full of separators; any
    /// two that share a text must be the same value.
    #[test]
    fn equal_text_means_equal_value(
        values in shape().prop_flat_map(|s| prop::collection::vec(value(&s, Alphabet::Tiny), 64))
    ) {
        let mut seen: HashMap<String, &Value> = HashMap::new();
        for value in &values {
            if let Some(earlier) = seen.insert(value.key_text(), value) {
                prop_assert_eq!(earlier, value, "same text {:?}", value.key_text());
            }
        }
    }

    #[test]
    fn strings_round_trip(text in prop_oneof![any::<String>(), "[-()'~: a\u{e9}\u{1F600}]{0,10}"]) {
        let atom = text.key_text();
        prop_assert_eq!(decode_atom(&atom), Ok(text.clone()), "atom {:?}", atom);
        // Nested among other strings, the atom still ends exactly where it should.
        let list = vec![text.clone(), String::from("-"), text.clone()];
        let decoded = decode_top(&Shape::Seq(Box::new(Shape::Str)), &list.key_text());
        prop_assert_eq!(decoded, Ok(Value::Seq(list.into_iter().map(Value::Str).collect())));
    }
}

/// The proptest model's value and the real types write the same text, so what the proptests
/// prove holds for the real impls.
#[test]
fn the_model_writes_what_the_real_types_write() {
    let s = |t: &str| Value::Str(t.to_owned());
    let model = Value::Tuple(vec![
        s("a-b"),
        Value::Int(-3),
        Value::Opt(None),
        Value::Opt(Some(Box::new(Value::Opt(None)))),
        Value::Seq(vec![]),
        Value::Seq(vec![s("")]),
        Value::Bytes(vec![0xca, 0xfe]),
        Value::Tuple(vec![s("x")]),
        Value::Tuple(vec![]),
    ]);
    let real = (
        "a-b",
        -3_i64,
        None::<u8>,
        Some(None::<u8>),
        Vec::<&str>::new(),
        vec![""],
        vec![0xca_u8, 0xfe],
        ("x",),
        (),
    );
    assert_eq!(model.key_text(), real.key_text());
    assert_eq!(real.key_text(), "'a-b'-'-3'-~-~~-()-('')-cafe-x-()");
}
