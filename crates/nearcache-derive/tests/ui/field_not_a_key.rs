use std::collections::HashMap;

use nearcache_derive::CacheKey;

struct Connection;

#[derive(CacheKey)]
#[cache_key(crate = "nearcache_keys")]
struct Query {
    filters: HashMap<String, String>,
    connection: Connection,
}

#[derive(CacheKey)]
#[cache_key(crate = "nearcache_keys")]
enum Source {
    Live(Connection),
}

fn main() {}
