//! Behaviour of `#[derive(CacheKey)]`: the text each shape of type writes, used alone and
//! nested. (`crate = "nearcache_keys"` because this crate's tests depend on
//! `nearcache-keys` directly; the facade's tests cover the default `::nearcache` path.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::marker::PhantomData;

use nearcache_derive::CacheKey;
use nearcache_keys::{CacheKey, Key, cache_key};

#[derive(CacheKey)]
#[cache_key(crate = "nearcache_keys")]
struct ComplexValueObject {
    prop1: String,
    prop2: String,
}

#[derive(CacheKey)]
#[cache_key(crate = "nearcache_keys")]
struct Pair(&'static str, &'static str);

#[derive(CacheKey)]
#[cache_key(crate = "nearcache_keys")]
struct UserId(u64);

#[derive(CacheKey)]
#[cache_key(crate = "nearcache_keys")]
struct Unit;

#[derive(CacheKey)]
#[cache_key(crate = "nearcache_keys")]
struct Empty {}

#[derive(CacheKey)]
#[cache_key(crate = "nearcache_keys")]
struct WithSkipped {
    id: u32,
    #[cache_key(skip)]
    _cache_hint: Vec<u8>,
    name: &'static str,
}

#[derive(CacheKey)]
#[cache_key(crate = "nearcache_keys")]
enum Filter {
    All,
    Category(u32),
    Range {
        from: u32,
        to: u32,
    },
    #[cache_key(rename = "tag")]
    ByTag(&'static str),
    Labeled {
        #[cache_key(skip)]
        _label: &'static str,
    },
    r#Type,
}

#[derive(CacheKey)]
#[cache_key(crate = "nearcache_keys")]
enum Never {}

struct Service;

#[test]
fn struct_fields_are_joined_in_order_and_parenthesised_as_an_argument() {
    let value = ComplexValueObject {
        prop1: "Prop1Value".into(),
        prop2: "Prop2Value".into(),
    };
    assert_eq!(value.key_text(), "Prop1Value-Prop2Value");
    assert_eq!(Key::of(&value).as_str(), "Prop1Value-Prop2Value");
    assert_eq!(
        cache_key!(Service, "get", &value).as_str(),
        "Service:get-(Prop1Value-Prop2Value)"
    );
}

#[test]
fn separators_in_fields_are_escaped() {
    assert_eq!(Pair("a-b", "c").key_text(), "'a-b'-c");
    assert_ne!(Pair("a-b", "c").key_text(), Pair("a", "b-c").key_text());
    // A struct nested in an argument list cannot be forged by a string holding separators.
    assert_ne!(
        cache_key!(Service, "m", &Pair("a", "b"), &"c"),
        cache_key!(Service, "m", &"(a-b)", &"c")
    );
    assert_ne!(
        cache_key!(Service, "m", &Pair("a", "b"), &"c"),
        cache_key!(Service, "m", &"a", &Pair("b", "c"))
    );
}

#[test]
fn newtypes_are_transparent() {
    assert_eq!(UserId(42).key_text(), "42");
    assert_eq!(
        cache_key!(Service, "user", &UserId(42)).as_str(),
        "Service:user-42"
    );
    assert_eq!(vec![UserId(1), UserId(2)].key_text(), "1-2");
}

#[test]
fn structs_without_key_fields() {
    assert_eq!(Unit.key_text(), "");
    assert_eq!(Empty {}.key_text(), "");
    assert_eq!((Unit, Empty {}).key_text(), "()-()");
    assert_eq!(cache_key!(Service, "m", &Unit).as_str(), "Service:m-()");
}

#[test]
fn skipped_fields_are_left_out() {
    let a = WithSkipped {
        id: 1,
        _cache_hint: vec![1, 2],
        name: "n",
    };
    let b = WithSkipped {
        id: 1,
        _cache_hint: vec![],
        name: "n",
    };
    assert_eq!(a.key_text(), "1-n");
    assert_eq!(a.key_text(), b.key_text());
}

#[test]
fn enum_variants_write_their_name() {
    assert_eq!(Filter::All.key_text(), "All");
    assert_eq!(Filter::Category(7).key_text(), "Category-7");
    assert_eq!(Filter::Range { from: 1, to: 9 }.key_text(), "Range-1-9");
    assert_eq!(Filter::ByTag("x-y").key_text(), "tag-'x-y'");
    assert_eq!(Filter::Labeled { _label: "any" }.key_text(), "Labeled");
    assert_eq!(Filter::r#Type.key_text(), "Type");
    assert_eq!(
        vec![Filter::All, Filter::Category(7)].key_text(),
        "All-(Category-7)"
    );
    assert_eq!(
        cache_key!(Service, "list", &Filter::Range { from: 1, to: 9 }).as_str(),
        "Service:list-(Range-1-9)"
    );
}

#[test]
fn enum_variants_never_collide() {
    let all = [
        Filter::All,
        Filter::Category(1),
        Filter::Range { from: 1, to: 1 },
        Filter::ByTag("All"),
        Filter::ByTag("Category-1"),
        Filter::Labeled { _label: "" },
        Filter::r#Type,
    ];
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            assert_ne!(a.key_text(), b.key_text());
        }
    }
}

#[test]
fn empty_enums_derive() {
    fn assert_key<T: CacheKey>() {}
    assert_key::<Never>();
}

#[derive(CacheKey)]
#[cache_key(crate = "nearcache_keys")]
struct Generic<'a, T, U, const N: usize> {
    items: [T; N],
    name: &'a str,
    #[cache_key(skip)]
    _marker: PhantomData<U>,
}

/// Not a `CacheKey`: usable as `U` because `U` is only in a skipped field.
struct NotAKey;

#[derive(CacheKey)]
#[cache_key(crate = "nearcache_keys")]
enum Tree<T> {
    Leaf(T),
    Node(Vec<Tree<T>>),
}

#[test]
fn generics_get_bounds_only_where_needed() {
    let value: Generic<'_, u8, NotAKey, 2> = Generic {
        items: [1, 2],
        name: "n",
        _marker: PhantomData,
    };
    assert_eq!(value.key_text(), "0102-n");
    let tree = Tree::Node(vec![Tree::Leaf("a"), Tree::Node(vec![])]);
    assert_eq!(tree.key_text(), "Node-((Leaf-a)-(Node-()))");
}
