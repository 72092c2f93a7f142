use std::collections::HashSet;

use nearcache_keys::cache_key;

struct ProductService;

fn main() {
    let tags: HashSet<&str> = HashSet::new();
    let _ = cache_key!(ProductService, "by_tags", &tags);
}
