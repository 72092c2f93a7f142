use nearcache_derive::CacheKey;

#[derive(CacheKey)]
#[cache_key(crate = "nearcache_keys", rename = "Q")]
struct Query {
    #[cache_key(rename = "cat")]
    catalog: String,
    term: String,
}

fn main() {}
