use nearcache_keys::{Key, cache_key};

struct ProductRepo;

impl ProductRepo {
    fn key(&self, id: u64) -> Key {
        cache_key!(Self, "get", &id)
    }
}

fn main() {}
