use nearcache_derive::CacheKey;

#[derive(CacheKey)]
#[cache_key(crate = "nearcache_keys", lowercase)]
struct Query {
    #[cache_key(flatten)]
    catalog: String,
    #[cache_key(default = "x")]
    term: String,
}

fn main() {}
