use nearcache_derive::CacheKey;

#[derive(CacheKey)]
#[cache_key = "nearcache_keys"]
struct A(u8);

#[derive(CacheKey)]
#[cache_key]
struct B(u8);

fn main() {}
