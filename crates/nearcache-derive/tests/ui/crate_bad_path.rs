use nearcache_derive::CacheKey;

#[derive(CacheKey)]
#[cache_key(crate = "nearcache keys")]
struct A(u8);

#[derive(CacheKey)]
#[cache_key(crate = nearcache_keys)]
struct B(u8);

#[derive(CacheKey)]
#[cache_key(crate = "nearcache_keys", crate = "nearcache_keys")]
struct C(u8);

#[derive(CacheKey)]
#[cache_key(crate = "nearcache_keys")]
enum D {
    #[cache_key(crate = "nearcache_keys")]
    V(#[cache_key(crate = "nearcache_keys")] u8),
}

fn main() {}
