use nearcache_derive::CacheKey;

#[derive(CacheKey)]
#[cache_key(crate = "nearcache_keys")]
struct Handle {
    #[cache_key(skip)]
    connection: u64,
    #[cache_key(skip)]
    retries: u8,
}

fn main() {}
