use nearcache_keys::cache_key;

struct ProductService;

fn main() {
    let _ = cache_key!(ProductServce, "get", &1);
}
