//! Injectivity of derived keys: a recursive derived enum over strings, integers, options,
//! sequences, tuples, struct variants and newtypes. Variant names are part of the text, so
//! for this one type, equal text must mean equal value — across all its shapes at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use nearcache_derive::CacheKey;
use nearcache_keys::CacheKey;
use proptest::prelude::*;

#[derive(CacheKey, Debug, Clone, PartialEq)]
#[cache_key(crate = "nearcache_keys")]
enum Value {
    Str(String),
    Int(i64),
    Opt(Option<Box<Value>>),
    Seq(Vec<Value>),
    Tuple(Box<Value>, Box<Value>),
    Struct {
        a: Box<Value>,
        b: Option<String>,
    },
    Newtype(Wrapper),
    Unit,
    #[cache_key(rename = "Str-")]
    Renamed(String),
}

#[derive(CacheKey, Debug, Clone, PartialEq)]
#[cache_key(crate = "nearcache_keys")]
struct Wrapper(Vec<String>);

fn value(text: BoxedStrategy<String>) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        text.clone().prop_map(Value::Str),
        (-3_i64..3).prop_map(Value::Int),
        Just(Value::Unit),
        Just(Value::Opt(None)),
        text.clone().prop_map(Value::Renamed),
        prop::collection::vec(text.clone(), 0..3).prop_map(|v| Value::Newtype(Wrapper(v))),
    ];
    leaf.prop_recursive(4, 32, 4, move |inner| {
        prop_oneof![
            inner.clone().prop_map(|v| Value::Opt(Some(Box::new(v)))),
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Seq),
            (inner.clone(), inner.clone())
                .prop_map(|(a, b)| Value::Tuple(Box::new(a), Box::new(b))),
            (inner, prop::option::of(text.clone()))
                .prop_map(|(a, b)| Value::Struct { a: Box::new(a), b }),
        ]
    })
}

fn tiny_text() -> BoxedStrategy<String> {
    "[-()'~a]{0,2}".boxed()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Pairs over arbitrary text: different values never share a text.
    #[test]
    fn different_values_have_different_text(
        a in value(any::<String>().boxed()),
        b in value(any::<String>().boxed()),
    ) {
        if a != b {
            prop_assert_ne!(a.key_text(), b.key_text());
        }
    }

    /// Collision hunt: many values over a tiny alphabet of separators and quotes, where a
    /// broken escape would make distinct values share a text.
    #[test]
    fn equal_text_means_equal_value(values in prop::collection::vec(value(tiny_text()), 64)) {
        let mut seen: HashMap<String, &Value> = HashMap::new();
        for value in &values {
            let text = value.key_text();
            if let Some(earlier) = seen.insert(text.clone(), value) {
                prop_assert_eq!(earlier, value, "both write {:?}", text);
            }
        }
    }
}

#[test]
fn renamed_variant_with_separator_cannot_pose_as_another() {
    assert_eq!(Value::Renamed("x".into()).key_text(), "'Str-'-x");
    assert_ne!(
        Value::Renamed("x".into()).key_text(),
        Value::Str("-x".into()).key_text()
    );
}
