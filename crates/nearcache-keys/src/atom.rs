//! Atom escaping: how one piece of text (a string, a number, a name) is written so that it
//! can never be confused with the separators around it.
//!
//! An atom is written *bare* when it is non-empty and contains none of the reserved
//! characters `-` `(` `)` `'` `~`; otherwise it is *quoted*: wrapped in `'` with every `'`
//! inside doubled (SQL style). Bare atoms keep common keys readable (`42`, `c1`, `Prop1Value`);
//! quoting keeps every atom self-delimiting, so the text stays injective.

/// Whether `byte` is one of the characters that force quoting.
///
/// All reserved characters are ASCII, and UTF-8 continuation bytes are never ASCII, so
/// scanning bytes is exact.
pub(crate) const fn is_reserved(byte: u8) -> bool {
    matches!(byte, b'-' | b'(' | b')' | b'\'' | b'~')
}

/// Whether `text` must be quoted to be written as an atom.
pub(crate) fn needs_quotes(text: &str) -> bool {
    text.is_empty() || text.bytes().any(is_reserved)
}

/// Appends `text` as an atom: bare when it can be, quoted otherwise.
pub(crate) fn push_atom(buf: &mut String, text: &str) {
    if needs_quotes(text) {
        push_quoted(buf, text);
    } else {
        buf.push_str(text);
    }
}

/// Appends `text` quoted: `'`, the text with each `'` doubled, `'`.
pub(crate) fn push_quoted(buf: &mut String, text: &str) {
    buf.reserve(text.len() + 2);
    buf.push('\'');
    let mut pieces = text.split('\'');
    if let Some(first) = pieces.next() {
        buf.push_str(first);
    }
    for piece in pieces {
        buf.push_str("''");
        buf.push_str(piece);
    }
    buf.push('\'');
}

/// Quotes, in place, the atom text already written at `buf[start..]` if it needs quotes.
///
/// Used for text produced by formatting (numbers, `Display` values): it is written first and
/// checked after, so the common bare case costs no copy.
pub(crate) fn quote_tail_if_needed(buf: &mut String, start: usize) {
    if needs_quotes(&buf[start..]) {
        let raw = buf.split_off(start);
        push_quoted(buf, &raw);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn atom(text: &str) -> String {
        let mut buf = String::new();
        push_atom(&mut buf, text);
        buf
    }

    #[test]
    fn plain_text_is_bare() {
        for text in ["Prop1Value", "42", "hello world", "a:b/c.d_e", "Grüße"] {
            assert_eq!(atom(text), text);
        }
    }

    #[test]
    fn reserved_characters_and_empty_text_are_quoted() {
        assert_eq!(atom(""), "''");
        assert_eq!(atom("a-b"), "'a-b'");
        assert_eq!(atom("(x)"), "'(x)'");
        assert_eq!(atom("~"), "'~'");
        assert_eq!(atom("it's"), "'it''s'");
        assert_eq!(atom("'"), "''''");
        assert_eq!(atom("''"), "''''''");
    }

    #[test]
    fn quoting_a_written_tail_matches_quoting_up_front() {
        for text in ["", "plain", "-7", "a'b", "x-y-z"] {
            let mut buf = String::from("prefix:");
            let start = buf.len();
            buf.push_str(text);
            quote_tail_if_needed(&mut buf, start);
            assert_eq!(buf, format!("prefix:{}", atom(text)), "text {text:?}");
        }
    }
}
