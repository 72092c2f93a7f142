use nearcache_derive::CacheKey;

#[derive(CacheKey)]
#[cache_key(crate = "nearcache_keys")]
enum Filter {
    #[cache_key(rename = all)]
    All,
    #[cache_key(rename = 7)]
    Seven,
}

fn main() {}
