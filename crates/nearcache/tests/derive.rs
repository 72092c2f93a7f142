//! `#[derive(CacheKey)]` through the facade: the generated code's default path
//! (`::nearcache::CacheKey`) and `cache_key!` work for a user who depends on `nearcache` only.
#![cfg(feature = "derive")]

use nearcache::{CacheKey, Key, cache_key};

#[derive(CacheKey)]
struct ComplexValueObject {
    prop1: String,
    prop2: String,
}

#[derive(CacheKey)]
enum Scope<T> {
    Global,
    #[cache_key(rename = "tenant")]
    Tenant(T),
}

struct ProductService;

#[test]
fn derived_keys_through_the_facade() {
    let value = ComplexValueObject {
        prop1: "Prop1Value".into(),
        prop2: "Prop2Value".into(),
    };
    assert_eq!(Key::of(&value).as_str(), "Prop1Value-Prop2Value");
    assert_eq!(
        cache_key!(ProductService, "get", &value, &Scope::Tenant(7_u32)).as_str(),
        "ProductService:get-(Prop1Value-Prop2Value)-(tenant-7)"
    );
    assert_eq!(Scope::<u32>::Global.key_text(), "Global");
}
