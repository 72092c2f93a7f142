//! [`KeyWriter`] and [`CompositeWriter`]: the only way a [`CacheKey`] impl writes text, so
//! every impl follows the grammar (escaping, nesting) without knowing it.
//!
//! A `KeyWriter` is handed to [`CacheKey::write_key`] **by value** and every write consumes
//! it, so an impl writes exactly one value: one atom, one `None`/`Some`, one composite, or it
//! forwards the writer to another `CacheKey`. Writing two values side by side (which could
//! be forged by a single value containing a separator) does not compile.

use std::fmt::{self, Write as _};

use crate::CacheKey;
use crate::atom;

/// Writes one value's part of a key. Handed to [`CacheKey::write_key`]; consumed by each write.
///
/// A writer knows whether its value is the top level of the key (then a composite is written
/// without its outer parentheses: `a-b`) or nested inside another value (`(a-b)`). See the
/// [crate docs](crate#grammar) for the whole grammar.
///
/// A writer is consumed by each write, so a `write_key` writes exactly one value; writing
/// two side by side (which a single value holding a separator could forge) does not compile.
///
/// Cost: every method appends to one buffer that grows in place; nothing allocates per part,
/// except quoting text produced by formatting (a negative number, a `Display` value with a
/// reserved character), which copies that one atom once, and a `Some` whose text starts
/// with `~`, which shifts that text by one byte.
#[derive(Debug)]
pub struct KeyWriter<'a> {
    buf: &'a mut String,
    nested: bool,
}

impl<'a> KeyWriter<'a> {
    /// A writer for the top level of a key, appending to `buf`.
    pub(crate) fn top(buf: &'a mut String) -> Self {
        KeyWriter { buf, nested: false }
    }

    /// A writer for an element nested inside a composite, appending to `buf`.
    pub(crate) fn nested(buf: &'a mut String) -> Self {
        KeyWriter { buf, nested: true }
    }

    /// Whether this value is nested inside another (rather than the top level of the key).
    pub fn is_nested(&self) -> bool {
        self.nested
    }

    /// Writes `text` as a string atom: bare if it is non-empty and free of the reserved
    /// characters `-` `(` `)` `'` `~`, otherwise quoted (`'a-b'`, `'it''s'`, `''`).
    pub fn write_str(self, text: &str) {
        atom::push_atom(self.buf, text);
    }

    /// Writes the `Display` text of `value` as an atom, exactly as [`write_str`] would write
    /// `value.to_string()`, but without the intermediate `String`.
    ///
    /// The text must identify the value: two values that display the same share a key. An
    /// error returned by the `Display` impl (which `ToString` would panic on) leaves the text
    /// written so far.
    ///
    /// [`write_str`]: KeyWriter::write_str
    pub fn write_display(self, value: &(impl fmt::Display + ?Sized)) {
        let start = self.buf.len();
        // Writing to a `String` only fails if the `Display` impl itself fails.
        let _ = write!(self.buf, "{value}");
        atom::quote_tail_if_needed(self.buf, start);
    }

    /// Writes a signed integer in decimal: `42`, or `'-7'` (quoted, since `-` is reserved).
    ///
    /// The same text as [`write_display`](KeyWriter::write_display) of the integer, without
    /// the formatting machinery (integers are the most common key part).
    pub fn write_i64(self, value: i64) {
        if value < 0 {
            self.buf.push_str("'-");
            push_decimal(self.buf, value.unsigned_abs());
            self.buf.push('\'');
        } else {
            push_decimal(self.buf, value.unsigned_abs());
        }
    }

    /// Writes an unsigned integer in decimal: `42`.
    ///
    /// The same text as [`write_display`](KeyWriter::write_display) of the integer.
    pub fn write_u64(self, value: u64) {
        push_decimal(self.buf, value);
    }

    /// Writes `bytes` as an atom of lowercase hex digits (`[0xde, 0xad]` → `dead`, no bytes
    /// → `''`), so byte strings such as UUIDs read as they usually do.
    pub fn write_bytes(self, bytes: &[u8]) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        if bytes.is_empty() {
            self.buf.push_str("''");
            return;
        }
        self.buf.reserve(bytes.len() * 2);
        for &byte in bytes {
            self.buf.push(char::from(HEX[usize::from(byte >> 4)]));
            self.buf.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
    }

    /// Writes `None`: `~`.
    pub fn write_none(self) {
        self.buf.push('~');
    }

    /// Writes `Some(value)`: the text of `value`, with one more `~` in front if that text
    /// starts with `~` (so `Some(None)` is `~~`, never `~`).
    pub fn write_some<T: CacheKey + ?Sized>(self, value: &T) {
        let start = self.buf.len();
        let nested = self.nested;
        value.write_key(KeyWriter {
            buf: self.buf,
            nested,
        });
        if self.buf.as_bytes().get(start) == Some(&b'~') {
            self.buf.insert(start, '~');
        }
    }

    /// Writes a composite (a struct, a tuple, a sequence): the elements `f` writes, separated
    /// by `-`, inside `(` `)` when nested. No elements: `()` nested, nothing at the top level.
    ///
    /// ```
    /// use nearcache_keys::{CacheKey, Key, KeyWriter};
    ///
    /// struct Query { catalog: String, page: u32 }
    ///
    /// impl CacheKey for Query {
    ///     fn write_key(&self, out: KeyWriter<'_>) {
    ///         out.write_composite(|c| {
    ///             c.element(&self.catalog).element(&self.page);
    ///         });
    ///     }
    /// }
    ///
    /// let query = Query { catalog: "c-1".into(), page: 2 };
    /// assert_eq!(Key::of(&query).as_str(), "'c-1'-2");
    /// assert_eq!(Key::of(&[&query]).as_str(), "('c-1'-2)");
    /// ```
    pub fn write_composite(self, f: impl FnOnce(&mut CompositeWriter<'_>)) {
        if self.nested {
            self.buf.push('(');
        }
        let mut composite = CompositeWriter {
            buf: self.buf,
            first: true,
        };
        f(&mut composite);
        if self.nested {
            self.buf.push(')');
        }
    }

    /// Writes the items of `iter` as a composite (see [`write_composite`]).
    ///
    /// [`write_composite`]: KeyWriter::write_composite
    pub fn write_seq<I>(self, iter: I)
    where
        I: IntoIterator,
        I::Item: CacheKey,
    {
        self.write_composite(|c| {
            for item in iter {
                c.element(&item);
            }
        });
    }

    /// Writes finished key text: verbatim at the top level (so `Key::of(&key) == key`), as a
    /// string atom when nested.
    pub(crate) fn write_key_text(self, text: &str) {
        if self.nested {
            atom::push_atom(self.buf, text);
        } else {
            self.buf.push_str(text);
        }
    }
}

/// Appends `value` in decimal.
fn push_decimal(buf: &mut String, value: u64) {
    let mut digits = [0_u8; 20];
    let mut at = digits.len();
    let mut rest = value;
    loop {
        at -= 1;
        // `rest % 10` is a single digit, so the cast cannot truncate.
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for &digit in &digits[at..] {
        buf.push(char::from(digit));
    }
}

/// Writes the elements of one composite; see [`KeyWriter::write_composite`].
#[derive(Debug)]
pub struct CompositeWriter<'a> {
    buf: &'a mut String,
    first: bool,
}

impl CompositeWriter<'_> {
    /// Appends one element, preceded by `-` unless it is the first.
    pub fn element<T: CacheKey + ?Sized>(&mut self, value: &T) -> &mut Self {
        if !self.first {
            self.buf.push('-');
        }
        self.first = false;
        write_element(self.buf, value);
        self
    }
}

/// Writes `value` as a nested element at the end of `buf`.
///
/// An impl that writes nothing still leaves a non-empty element (`''`, the empty string),
/// so the text around it stays well formed: every nested element is non-empty, which is what
/// tells `[]` (no elements) from `[""]` (one).
pub(crate) fn write_element<T: CacheKey + ?Sized>(buf: &mut String, value: &T) {
    let start = buf.len();
    value.write_key(KeyWriter::nested(buf));
    if buf.len() == start {
        buf.push_str("''");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn top(f: impl FnOnce(KeyWriter<'_>)) -> String {
        let mut buf = String::new();
        f(KeyWriter::top(&mut buf));
        buf
    }

    fn nested(f: impl FnOnce(KeyWriter<'_>)) -> String {
        let mut buf = String::new();
        f(KeyWriter::nested(&mut buf));
        buf
    }

    #[test]
    fn composites_have_parentheses_only_when_nested() {
        let write = |out: KeyWriter<'_>| {
            out.write_composite(|c| {
                c.element("a").element(&1_u8);
            })
        };
        assert_eq!(top(write), "a-1");
        assert_eq!(nested(write), "(a-1)");
    }

    #[test]
    fn empty_composites() {
        let write = |out: KeyWriter<'_>| out.write_composite(|_| {});
        assert_eq!(top(write), "");
        assert_eq!(nested(write), "()");
    }

    #[test]
    fn display_text_is_escaped_like_a_string() {
        assert_eq!(top(|w| w.write_display(&-7)), "'-7'");
        assert_eq!(top(|w| w.write_display("a'b")), "'a''b'");
        assert_eq!(top(|w| w.write_display(&7)), "7");
        assert_eq!(top(|w| w.write_display("")), "''");
    }

    #[test]
    fn integers_write_what_display_would() {
        for value in [0, 1, 9, 10, 99, 100, -1, -10, i64::MAX, i64::MIN] {
            assert_eq!(
                top(|w| w.write_i64(value)),
                top(|w| w.write_display(&value))
            );
        }
        for value in [0, 9, 10, 1_000_000, u64::MAX] {
            assert_eq!(
                top(|w| w.write_u64(value)),
                top(|w| w.write_display(&value))
            );
        }
    }

    #[test]
    fn bytes_are_hex() {
        assert_eq!(
            top(|w| w.write_bytes(&[0x00, 0x0f, 0xde, 0xad])),
            "000fdead"
        );
        assert_eq!(top(|w| w.write_bytes(&[])), "''");
    }

    #[test]
    fn some_gets_an_extra_tilde_only_when_needed() {
        assert_eq!(top(|w| w.write_none()), "~");
        assert_eq!(top(|w| w.write_some("x")), "x");
        assert_eq!(top(|w| w.write_some(&None::<u8>)), "~~");
        assert_eq!(top(|w| w.write_some(&Some(None::<u8>))), "~~~");
    }

    #[test]
    fn an_impl_that_writes_nothing_still_leaves_a_nested_element() {
        struct Nothing;
        impl CacheKey for Nothing {
            fn write_key(&self, _out: KeyWriter<'_>) {}
        }
        let text = top(|w| {
            w.write_composite(|c| {
                c.element(&Nothing).element(&Nothing);
            })
        });
        assert_eq!(text, "''-''");
    }

    #[test]
    fn key_text_is_verbatim_only_at_the_top_level() {
        assert_eq!(top(|w| w.write_key_text("T:m-1")), "T:m-1");
        assert_eq!(nested(|w| w.write_key_text("T:m-1")), "'T:m-1'");
    }
}
