//! [`KeyBuilder`]: keys of the form `Type:method-arg1-arg2`, the readable shape of the
//! original `CacheKey.With(GetType(), nameof(Method), args)`; what [`cache_key!`] expands to.
//!
//! [`cache_key!`]: crate::cache_key

use std::fmt;

use crate::atom;
use crate::writer::write_element;
use crate::{CacheKey, Key, buffer};

/// Builds a key `Type:method-arg1-arg2-…` from a type name, a method name and arguments.
///
/// Usually reached through [`cache_key!`](crate::cache_key), which passes the type as
/// written in the source. The parts are written as follows (the [crate docs](crate#grammar)
/// have the whole grammar):
///
/// - **type name**: whitespace is normalized (removed, except one space between two word
///   characters: `Vec < u8 >` → `Vec<u8>`, `& 'a str` → `&'a str`), so a compiler that
///   spaces `stringify!` output differently gives the same key. It is written as is when
///   it looks like a Rust type (not empty, does not start with `'`, every `:` is part of a
///   `::` that is not at the end: `a::B`, `Vec<u8>`, `Foo<'a>`), and quoted otherwise.
/// - `:`
/// - **method name**: a string atom, also quoted if it contains `:` (so the first lone `:`
///   always ends the type name).
/// - **each argument**: `-` and the argument's nested text (composites in parentheses:
///   `Type:method-(c1-2)`). No arguments: no `-` at all (`Type:method`).
///
/// ```
/// use nearcache_keys::KeyBuilder;
///
/// let key = KeyBuilder::new("ProductService", "get").arg(&42).build();
/// assert_eq!(key.as_str(), "ProductService:get-42");
///
/// let mut builder = KeyBuilder::new("Search", "page");
/// for term in ["red", "big-box"] {
///     builder.arg(term);
/// }
/// assert_eq!(builder.as_str(), "Search:page-red-'big-box'");
/// ```
///
/// Cost: the builder writes into a reused per-thread buffer (returned on drop);
/// [`build`](KeyBuilder::build) allocates the key's shared text once.
#[derive(Clone)]
pub struct KeyBuilder {
    buf: String,
}

impl KeyBuilder {
    /// A builder for a key of `type_name` and `method`, with no arguments yet.
    pub fn new(type_name: &str, method: &str) -> Self {
        let mut buf = buffer::take();
        push_type_name(&mut buf, type_name);
        buf.push(':');
        push_method(&mut buf, method);
        KeyBuilder { buf }
    }

    /// Appends one argument: `-` and the argument's nested text.
    pub fn arg<T: CacheKey + ?Sized>(&mut self, value: &T) -> &mut Self {
        self.buf.push('-');
        write_element(&mut self.buf, value);
        self
    }

    /// The key text built so far.
    pub fn as_str(&self) -> &str {
        &self.buf
    }

    /// The finished key. The builder can go on taking arguments afterwards.
    pub fn build(&self) -> Key {
        Key::from_text(self.buf.as_str())
    }
}

impl Drop for KeyBuilder {
    fn drop(&mut self) {
        buffer::give_back(std::mem::take(&mut self.buf));
    }
}

impl fmt::Debug for KeyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("KeyBuilder").field(&self.buf).finish()
    }
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Appends the type name, whitespace normalized, bare if it looks like a Rust type.
fn push_type_name(buf: &mut String, type_name: &str) {
    let start = buf.len();
    if type_name.bytes().all(|b| b.is_ascii_graphic()) {
        // The common case (`ProductService`, `a::B<u8>`): no whitespace to normalize.
        buf.push_str(type_name);
    } else {
        push_normalized(buf, type_name);
    }
    if !is_bare_type_name(&buf[start..]) {
        let raw = buf.split_off(start);
        atom::push_quoted(buf, &raw);
    }
}

/// Appends `type_name` without whitespace, except one space between two word characters.
fn push_normalized(buf: &mut String, type_name: &str) {
    let mut pending_space = false;
    let mut last = None;
    for c in type_name.chars() {
        if c.is_whitespace() {
            pending_space = true;
            continue;
        }
        if pending_space && is_word_char(c) && last.is_some_and(is_word_char) {
            buf.push(' ');
        }
        pending_space = false;
        last = Some(c);
        buf.push(c);
    }
}

/// Whether a (normalized) type name can be written without quotes: the key's first lone `:`
/// must be the one that ends it, and a quoted name must be told from a bare one.
fn is_bare_type_name(name: &str) -> bool {
    if name.is_empty() || name.starts_with('\'') || name.ends_with(':') {
        return false;
    }
    let mut run = 0;
    for byte in name.bytes() {
        if byte == b':' {
            run += 1;
        } else if run != 0 && run != 2 {
            return false;
        } else {
            run = 0;
        }
    }
    true
}

/// Appends the method name: a string atom, quoted also if it contains `:`.
fn push_method(buf: &mut String, method: &str) {
    if atom::needs_quotes(method) || method.contains(':') {
        atom::push_quoted(buf, method);
    } else {
        buf.push_str(method);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(type_name: &str, method: &str) -> String {
        KeyBuilder::new(type_name, method).as_str().to_owned()
    }

    #[test]
    fn no_arguments_means_no_dash() {
        assert_eq!(prefix("ProductService", "list"), "ProductService:list");
    }

    #[test]
    fn arguments_are_nested_elements() {
        let key = KeyBuilder::new("S", "m")
            .arg(&42)
            .arg("a-b")
            .arg(&("x", 1))
            .arg(&None::<u8>)
            .arg(&(1,))
            .build();
        assert_eq!(key.as_str(), "S:m-42-'a-b'-(x-1)-~-1");
    }

    /// Asserts how each type name is written in a key's prefix (before `:method`).
    fn assert_type_names_written(cases: &[(&str, &str)]) {
        for &(type_name, written) in cases {
            assert_eq!(
                prefix(type_name, "m"),
                format!("{written}:m"),
                "{type_name:?}"
            );
        }
    }

    #[test]
    fn type_name_whitespace_is_normalized() {
        assert_type_names_written(&[
            ("Vec < u8 >", "Vec<u8>"),
            ("a :: B", "a::B"),
            ("& 'static str", "&'static str"),
            ("dyn  Fn ( u8 ) -> u8", "dyn Fn(u8)->u8"),
            ("Foo<A, B<C>>", "Foo<A,B<C>>"),
        ]);
    }

    #[test]
    fn odd_type_names_are_quoted() {
        assert_type_names_written(&[
            ("", "''"),
            ("a:b", "'a:b'"),
            ("a:::b", "'a:::b'"),
            ("a::", "'a::'"),
            ("'a", "'''a'"),
            ("::a::B", "::a::B"),
        ]);
    }

    #[test]
    fn method_names_are_atoms_and_never_contain_a_bare_colon() {
        assert_eq!(prefix("T", "get-by-id"), "T:'get-by-id'");
        assert_eq!(prefix("T", ":x"), "T:':x'");
        assert_eq!(prefix("T", ""), "T:''");
    }

    #[test]
    fn method_and_argument_text_cannot_collide() {
        let one_method = KeyBuilder::new("A", "b-c").build();
        let method_and_arg = KeyBuilder::new("A", "b").arg("c").build();
        assert_ne!(one_method, method_and_arg);
        let path_type = KeyBuilder::new("a::B", "get").build();
        let colon_method = KeyBuilder::new("a", ":B:get").build();
        assert_ne!(path_type, colon_method);
    }

    #[test]
    fn build_can_be_repeated_and_continued() {
        let mut builder = KeyBuilder::new("T", "m");
        let first = builder.build();
        builder.arg(&1);
        assert_eq!(first.as_str(), "T:m");
        assert_eq!(builder.build().as_str(), "T:m-1");
    }
}
