use nearcache_derive::CacheKey;

#[derive(CacheKey)]
#[cache_key(crate = "nearcache_keys", skip)]
enum Filter {
    #[cache_key(skip)]
    All,
    Some(#[cache_key(skip = true)] u8, #[cache_key(skip, skip)] u8),
}

fn main() {}
