use nearcache_derive::CacheKey;

#[derive(CacheKey)]
#[cache_key(crate = "nearcache_keys")]
union Bits {
    int: u32,
    float: f32,
}

fn main() {}
