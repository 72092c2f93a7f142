//! Strings: atoms, bare when plain, quoted when empty or holding a reserved character.
//! (`Cow<str>` is covered by the `Cow` impl in `wrapper.rs`.)

use crate::{CacheKey, KeyWriter};

impl CacheKey for str {
    fn write_key(&self, out: KeyWriter<'_>) {
        out.write_str(self);
    }
}

impl CacheKey for String {
    fn write_key(&self, out: KeyWriter<'_>) {
        out.write_str(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_atoms() {
        let atoms = [
            ("Prop1Value", "Prop1Value"),
            ("a-b", "'a-b'"),
            ("", "''"),
            ("O'Brien", "'O''Brien'"),
            ("~", "'~'"),
            ("(x)", "'(x)'"),
        ];
        for (text, atom) in atoms {
            assert_eq!(text.key_text(), atom, "{text:?}");
            assert_eq!(String::from(text).key_text(), atom, "{text:?} as a String");
        }
    }

    #[test]
    fn keys_are_case_sensitive() {
        assert_ne!("Abc".key_text(), "abc".key_text());
    }

    #[test]
    fn str_and_string_write_the_same() {
        for text in ["", "x", "a-b", "é"] {
            assert_eq!(text.key_text(), String::from(text).key_text());
        }
    }
}
