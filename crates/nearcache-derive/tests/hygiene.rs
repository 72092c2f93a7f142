//! The generated code must use only fully qualified paths: here the prelude is gone and
//! common names are shadowed, so any `Result`, `Option`, `CacheKey` or `KeyWriter` the
//! derive left unqualified would fail to compile.
#![allow(dead_code, non_camel_case_types)]

#[no_implicit_prelude]
mod shadowed {
    struct Result;
    struct Option;
    struct Some;
    struct None;
    struct String;
    struct Box;
    struct Vec;
    struct CacheKey;
    struct KeyWriter;
    struct CompositeWriter;
    struct write_key;
    struct element;
    mod core {}
    mod std {}
    mod nearcache_keys {}
    #[allow(non_upper_case_globals)]
    const out: u8 = 0;
    #[allow(non_upper_case_globals)]
    const c: u8 = 0;

    #[derive(::nearcache_derive::CacheKey)]
    #[cache_key(crate = "::nearcache_keys")]
    struct Named {
        a: u8,
        b: &'static str,
    }

    #[derive(::nearcache_derive::CacheKey)]
    #[cache_key(crate = "::nearcache_keys")]
    struct Newtype(u8);

    #[derive(::nearcache_derive::CacheKey)]
    #[cache_key(crate = "::nearcache_keys")]
    struct Unit;

    #[derive(::nearcache_derive::CacheKey)]
    #[cache_key(crate = "::nearcache_keys")]
    enum Enum<T> {
        A,
        B(T, #[cache_key(skip)] u8),
        C { x: u8, y: T },
    }

    #[derive(::nearcache_derive::CacheKey)]
    #[cache_key(crate = "::nearcache_keys")]
    enum Never {}

    pub(super) fn texts() -> [::std::string::String; 5] {
        use ::nearcache_keys::CacheKey as _;
        [
            Named { a: 1, b: "b" }.key_text(),
            Newtype(2).key_text(),
            Unit.key_text(),
            Enum::<u8>::A.key_text(),
            (Enum::B(3_u8, 0), Enum::C { x: 4, y: 5_u8 }).key_text(),
        ]
    }
}

#[test]
fn generated_code_is_fully_qualified() {
    assert_eq!(
        shadowed::texts(),
        ["1-b", "2", "", "A", "(B-3)-(C-4-5)"].map(String::from)
    );
}
