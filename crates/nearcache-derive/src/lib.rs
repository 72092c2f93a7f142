//! `#[derive(CacheKey)]` for nearcache.
//!
//! Use it through the `nearcache` crate (feature `derive`, on by default), which re-exports
//! it next to the `CacheKey` trait; the generated code refers to `::nearcache::CacheKey`
//! unless told otherwise with `#[cache_key(crate = "...")]`.

mod attr;
mod bound;
mod errors;
mod expand;

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

/// Derives `CacheKey`: a struct or enum writes its fields in declaration order, following
/// the key grammar of `nearcache-keys`.
///
/// ```
/// # extern crate nearcache_keys as nearcache;
/// # use nearcache_derive::CacheKey;
/// use nearcache::{CacheKey, Key, cache_key};
///
/// #[derive(CacheKey)]
/// struct ComplexValueObject {
///     prop1: String,
///     prop2: String,
/// }
///
/// #[derive(CacheKey)]
/// struct UserId(u64);
///
/// #[derive(CacheKey)]
/// enum Filter {
///     All,
///     #[cache_key(rename = "cat")]
///     Category { id: u32, #[cache_key(skip)] label: String },
/// }
///
/// let value = ComplexValueObject { prop1: "Prop1Value".into(), prop2: "Prop2Value".into() };
/// assert_eq!(value.key_text(), "Prop1Value-Prop2Value");
/// assert_eq!(Key::of(&UserId(42)).as_str(), "42");
///
/// struct Catalog;
/// let filter = Filter::Category { id: 7, label: "ignored".into() };
/// assert_eq!(
///     cache_key!(Catalog, "list", &filter, &value).as_str(),
///     "Catalog:list-(cat-7)-(Prop1Value-Prop2Value)",
/// );
/// assert_eq!(Filter::All.key_text(), "All");
/// ```
///
/// # What it writes
///
/// | input | text at the top level | nested (an argument, a field) |
/// |---|---|---|
/// | struct with 2+ key fields | `a-b` | `(a-b)` |
/// | struct with one key field (newtype) | the field's text | the field's text |
/// | unit struct, `struct S {}` | (empty) | `()` |
/// | enum variant without key fields | its name: `All` | `All` |
/// | enum variant with key fields | `Name-a-b` | `(Name-a-b)` |
///
/// Field names, the struct's name and the enum's name are not part of the text; a variant's
/// name is. Reordering fields, or renaming a variant without `rename`, changes every key of
/// the type (a deliberate format change).
///
/// # Attributes
///
/// - `#[cache_key(skip)]` on a field: the field is not part of the key (and its type needs
///   no `CacheKey`). Skipping every field of a struct is an error, since all its values
///   would share one key; a variant whose fields are all skipped writes just its name.
/// - `#[cache_key(rename = "name")]` on an enum variant: the name written in keys, so a
///   variant can be renamed in code without changing its keys. Two variants that write the
///   same name are an error. `rename` means nothing elsewhere (field and type names are not
///   in the text), so it is an error there.
/// - `#[cache_key(crate = "path")]` on the type: where `CacheKey` and `KeyWriter` are found.
///   The default, `::nearcache`, works for users of the `nearcache` crate; use
///   `crate = "nearcache_keys"` when depending on `nearcache-keys` directly.
///
/// # Generics
///
/// Each type parameter that appears in a key field gets a `T: CacheKey` bound; parameters
/// used only in skipped fields (such as a `PhantomData<T>`, which is itself no key) get none.
///
/// # Errors
///
/// Unions, unknown attributes, attributes in the wrong place, duplicates, values that are
/// not string literals, a `crate` that is not a path, and the cases above are compile
/// errors pointing at the offending tokens — all of them at once.
#[proc_macro_derive(CacheKey, attributes(cache_key))]
pub fn derive_cache_key(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
