use nearcache_derive::CacheKey;

#[derive(CacheKey)]
#[cache_key(crate = "nearcache_keys")]
enum Filter {
    #[cache_key(rename = "all", rename = "every")]
    All,
    #[cache_key(rename = "Some")]
    Any,
    Some,
}

fn main() {}
