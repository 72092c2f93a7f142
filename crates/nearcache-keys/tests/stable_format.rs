//! The key format crosses process boundaries between versions (a rolling deploy runs old and
//! new instances on one backplane), so these texts are pinned. If one of these assertions has
//! to change, that is a format change: every instance must move at once, and the changelog
//! must say so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use nearcache_keys::{CacheKey, Key, KeyBuilder, cache_key};

struct ProductService;

#[test]
fn type_method_argument_keys() {
    let pinned = [
        (
            cache_key!(ProductService, "get", &42),
            "ProductService:get-42",
        ),
        (cache_key!(ProductService, "list"), "ProductService:list"),
        (
            cache_key!(
                ProductService,
                "search",
                &("c1", "red shoes"),
                &Some(2_u32),
                &None::<u32>
            ),
            "ProductService:search-(c1-red shoes)-2-~",
        ),
        (
            cache_key!(ProductService, "by_date", &"2024-01-05", &-1_i64, &1.5_f64),
            "ProductService:by_date-'2024-01-05'-'-1'-1.5",
        ),
        (
            cache_key!(Vec<u8>, "x", &vec![0xde_u8, 0xad], &Vec::<u8>::new()),
            "Vec<u8>:x-dead-''",
        ),
        (
            cache_key!(
                ProductService,
                "tags",
                &Vec::<&str>::new(),
                &vec![""],
                &vec!["it's"]
            ),
            "ProductService:tags-()-('')-('it''s')",
        ),
        (
            KeyBuilder::new("a :: B", "get-all")
                .arg(&true)
                .arg(&'x')
                .build(),
            "a::B:'get-all'-true-x",
        ),
    ];
    for (key, text) in pinned {
        assert_eq!(key.as_str(), text);
    }
}

#[test]
fn single_value_keys() {
    let map: BTreeMap<&str, Option<u8>> = [("b", None), ("a", Some(1))].into_iter().collect();
    let set: BTreeSet<i32> = [3, -1].into_iter().collect();
    let pinned = [
        (
            Key::of(&("Prop1Value", "Prop2Value")),
            "Prop1Value-Prop2Value",
        ),
        (Key::of(&("a-b", "c")), "'a-b'-c"),
        (Key::of(&("a", "b-c")), "a-'b-c'"),
        (Key::of(&map), "(a-1)-(b-~)"),
        (Key::of(&set), "'-1'-3"),
        (Key::of(&Some(None::<u8>)), "~~"),
        (Key::of(&[[0x01_u8, 0x02], [0xff, 0x00]]), "0102-ff00"),
        (
            Key::of(&(f64::NAN, -0.0_f64, f32::INFINITY)),
            "NaN-'-0'-inf",
        ),
    ];
    for (key, text) in pinned {
        assert_eq!(key.as_str(), text);
    }
    assert_eq!("c1".key_text(), "c1");
}
