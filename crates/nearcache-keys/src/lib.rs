//! Cache keys for nearcache: injective, case-sensitive, stable across builds, and readable.
//!
//! A cache key is text. Each instance of a service indexes its local cache by it, and
//! invalidations carry it to every other instance, so the same value must give the same
//! text on every instance and in every version, and two different values must never give
//! the same text (or one value would be served for the other). This crate builds that text:
//!
//! - [`CacheKey`]: implemented (or derived, with `nearcache`'s `derive` feature) by anything
//!   that can be part of a key; [`CacheKey::key_text`] gives one value's text.
//! - [`cache_key!`] and [`KeyBuilder`]: `Type:method-arg1-arg2`, the readable shape of the
//!   original `CacheKey.With(GetType(), nameof(Method), args)`.
//! - [`Key`]: finished text plus its precomputed hash, what the store is indexed by.
//!   [`Key::of`] uses one value as a whole key.
//!
//! ```
//! use nearcache_keys::{CacheKey, Key, cache_key};
//!
//! struct ProductService;
//!
//! assert_eq!(cache_key!(ProductService, "get", &42).as_str(), "ProductService:get-42");
//! assert_eq!(
//!     cache_key!(ProductService, "search", &("c1", "red-shoes"), &Some(2)).as_str(),
//!     "ProductService:search-(c1-'red-shoes')-2",
//! );
//! assert_eq!(Key::of(&("Prop1Value", "Prop2Value")).as_str(), "Prop1Value-Prop2Value");
//! assert_eq!("c1".key_text(), "c1");
//!
//! // Keys are injective (separators in parts are escaped) and case-sensitive:
//! assert_ne!(Key::of(&("a-b", "c")), Key::of(&("a", "b-c")));
//! assert_ne!(Key::of("Abc"), Key::of("abc"));
//! ```
//!
//! # Grammar
//!
//! Five characters are reserved: `-` separates elements, `(` `)` delimit nested composites,
//! `'` quotes, `~` marks `None`. Every value is written as one *term*:
//!
//! | value | text |
//! |---|---|
//! | string, `char`, number, `bool` | bare if non-empty and free of reserved characters: `c1`, `42`, `true`, `red shoes`, `12:30` |
//! | …otherwise | quoted, `'` doubled inside: `''` (empty), `'a-b'`, `'-7'`, `'it''s'` |
//! | floats | shortest round-trip decimal: `1.5`, `'-0.25'`, `inf`; every NaN is `NaN`; `-0.0` is `'-0'`, not `0` |
//! | `[u8]`, `[u8; N]`, `Vec<u8>` | lowercase hex: `dead`, a UUID as 32 digits; no bytes: `''` |
//! | `None` | `~` |
//! | `Some(v)` | `v`'s text; if that starts with `~`, one more `~` in front (`Some(None)` = `~~`) |
//! | composite: tuple, struct, sequence, set | elements joined by `-`, in `(` `)`: `(a-b)`; no elements: `()` |
//! | map | a sequence of `(key-value)` pairs: `((k1-1)-(k2-2))` |
//! | one-field tuple or struct (newtype) | the field's text: `UserId(42)` is `42` |
//! | enum variant without fields (derived) | its name: `Active` |
//! | enum variant with fields (derived) | a composite of its name and fields: `(Search-c1-2)` |
//! | `&T`, `Box`, `Rc`, `Arc`, `Cow` | what they point to |
//! | [`Key`] | its text as a string atom (verbatim when it is the whole key) |
//!
//! **Top level.** The outermost value of a key drops its composite's parentheses: `Key::of`,
//! [`key_text`](CacheKey::key_text) and a struct used as a whole key give `a-b`, not `(a-b)`
//! (and the empty composite is the empty text). Nested values always keep them.
//!
//! **`Type:method` keys** ([`cache_key!`], [`KeyBuilder`]): the type as written (whitespace
//! normalized; quoted if it is not shaped like a Rust type), `:`, the method as an atom
//! (also quoted if it contains `:`), then for each argument `-` and its term.
//! No arguments: `Type:method`.
//!
//! | call | key text |
//! |---|---|
//! | `cache_key!(ProductService, "get", &42)` | `ProductService:get-42` |
//! | `cache_key!(ProductService, "list")` | `ProductService:list` |
//! | `cache_key!(catalog::Product<u8>, "get", &"a-b")` | `catalog::Product<u8>:get-'a-b'` |
//! | `cache_key!(S, "find", &query)` (derived struct, 2 fields) | `S:find-(c1-shoes)` |
//! | `cache_key!(S, "page", &None::<u32>, &Some(2))` | `S:page-~-2` |
//! | `cache_key!(S, "tags", &Vec::<&str>::new(), &vec![""])` | `S:tags-()-('')` |
//!
//! Why this is injective: atoms never contain an unquoted reserved character, quoted atoms
//! end at the only `'` not doubled, no nested term is ever empty, and composites nest with
//! balanced parentheses — so a key's text parses back into exactly one tree of terms, and
//! for a given type, each value has its own tree. The guarantee is *per type*: values of
//! different types can share text (`42` and `"42"` both write `42`; `(a,)` and `a` too);
//! the type and method in front are what keep different kinds of keys apart. The tests
//! prove it with a decoder over random nested values.
//!
//! The text crosses process boundaries between versions, so it is pinned by tests: a
//! change to it is a deliberate, visible format change.
//!
//! # Why the type part is `stringify!`, never `type_name` or `TypeId`
//!
//! `std::any::type_name` is documented as a diagnostic whose text may change between
//! compiler versions, and `TypeId` differs between builds. Instances running different
//! builds (a rolling deploy) must agree on keys, so the type part is the type as written in
//! the source. The cost: `a::B` and `B` are different prefixes, so write a type the same
//! way everywhere; and `Self` or a generic parameter `T` would be the same text for many
//! types (`cache_key!` refuses `Self`).
//!
//! # Why there is no `CacheKey` for `HashMap` or `HashSet`
//!
//! Their iteration order is randomized per process: two equal sets would write two
//! different keys on two instances, so an invalidation would miss. Use `BTreeMap` and
//! `BTreeSet`, whose order is the keys' order.
//!
//! # Cost
//!
//! Building a key writes every part into one buffer that grows in place (a per-thread
//! buffer, reused across keys), then copies the text once into the [`Key`]'s shared
//! allocation: one allocation per key, none per part. Numbers are formatted straight into
//! the buffer; an atom is scanned once for reserved characters and copied a second time only
//! if it must be quoted. Hashing the key afterwards reads the text once. Measured in a
//! release build on the 2-core development machine: about 60 ns for
//! `cache_key!(ProductService, "get", &id)` and 85 ns for a key with a tuple and an option
//! argument, against about 50 ns for `Key::from_text(format!(..))` of the same text (which is
//! not injective).
#![cfg_attr(docsrs, feature(doc_cfg))]

mod atom;
mod buffer;
mod builder;
mod cache_key;
mod impls;
mod key;
mod macros;
mod writer;

pub use builder::KeyBuilder;
pub use cache_key::CacheKey;
pub use key::Key;
pub use writer::{CompositeWriter, KeyWriter};
