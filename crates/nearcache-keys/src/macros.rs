//! The [`cache_key!`](crate::cache_key) macro.

/// Builds a [`Key`](crate::Key) `Type:method-arg1-arg2-…` from a type, a method name and
/// arguments (anything implementing [`CacheKey`](crate::CacheKey), by reference or by value;
/// arguments are only borrowed).
///
/// A key named by a type, a method and the method's arguments, in that order:
///
/// ```
/// use nearcache_keys::cache_key;
///
/// struct ProductService;
///
/// assert_eq!(cache_key!(ProductService, "get", &42).as_str(), "ProductService:get-42");
/// assert_eq!(cache_key!(ProductService, "list").as_str(), "ProductService:list");
/// assert_eq!(
///     cache_key!(ProductService, "search", &("c1", "red shoes"), &2).as_str(),
///     "ProductService:search-(c1-red shoes)-2",
/// );
/// ```
///
/// - The type part is the type **as written** (`stringify!`, whitespace normalized as
///   [`KeyBuilder`](crate::KeyBuilder) describes), never `type_name` or `TypeId`, whose
///   text is not stable across builds. So write a type the same way at every call site:
///   `cache_key!(a::B, ..)` and `cache_key!(B, ..)` are different keys. Generic parameters
///   are written by name (`Repo<T>`), the same for every `T`: use concrete types, or pass
///   what tells the instantiations apart as an argument. The type must exist (a typo does
///   not compile).
/// - `Self` is refused at compile time: it would write `Self` for every type.
/// - The method is any `&str` expression, usually a literal.
/// - No arguments gives `Type:method`; each argument adds `-` and its nested text, so a
///   composite argument is in parentheses: `Type:method-(c1-2)`.
///
/// ```compile_fail
/// use nearcache_keys::cache_key;
///
/// struct Repo;
/// impl Repo {
///     fn key(&self) -> nearcache_keys::Key {
///         cache_key!(Self, "get", &1) // error: write the type's name instead of `Self`
///     }
/// }
/// ```
#[macro_export]
macro_rules! cache_key {
    (Self $($rest:tt)*) => {
        ::core::compile_error!(
            "cache_key!: write the type's name instead of `Self`: `Self` is the same text for every type, so their keys would collide"
        )
    };
    ($type:ty, $method:expr $(, $arg:expr)* $(,)?) => {{
        // The type part must name a type that exists (catches typos).
        let _: ::core::marker::PhantomData<$type> = ::core::marker::PhantomData;
        $crate::KeyBuilder::new(::core::stringify!($type), $method)
            $(.arg(&$arg))*
            .build()
    }};
}

#[cfg(test)]
mod tests {
    struct ProductService;

    mod catalog {
        pub(super) struct Product<T>(T);
    }

    #[test]
    fn type_method_and_arguments() {
        assert_eq!(
            cache_key!(ProductService, "get", &42).as_str(),
            "ProductService:get-42"
        );
        assert_eq!(
            cache_key!(ProductService, "get", 42, "x",).as_str(),
            "ProductService:get-42-x"
        );
        assert_eq!(
            cache_key!(ProductService, "list").as_str(),
            "ProductService:list"
        );
    }

    #[test]
    fn paths_and_generics_are_written_as_written() {
        assert_eq!(
            cache_key!(catalog::Product<u8>, "get").as_str(),
            "catalog::Product<u8>:get"
        );
        assert_eq!(
            cache_key!(self::catalog::Product<Vec<u8>>, "get").as_str(),
            "self::catalog::Product<Vec<u8>>:get"
        );
        assert_eq!(cache_key!(&'static str, "m").as_str(), "&'static str:m");
    }

    #[test]
    fn arguments_are_borrowed_not_moved() {
        let name = String::from("n");
        let key = cache_key!(ProductService, "by_name", name);
        assert_eq!(key.as_str(), "ProductService:by_name-n");
        assert_eq!(name, "n");
    }

    #[test]
    fn same_as_the_builder() {
        let method = "get";
        assert_eq!(
            cache_key!(ProductService, method, &1, &"a"),
            crate::KeyBuilder::new("ProductService", "get")
                .arg(&1)
                .arg("a")
                .build()
        );
    }
}
