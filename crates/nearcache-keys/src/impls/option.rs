//! `Option`: `None` is `~`; `Some(v)` is `v`'s text, with one more `~` in front when that
//! text starts with `~` (`Some(None)` is `~~`), so `Some` stays readable and never collides
//! with `None`.

use crate::{CacheKey, KeyWriter};

impl<T: CacheKey> CacheKey for Option<T> {
    fn write_key(&self, out: KeyWriter<'_>) {
        match self {
            None => out.write_none(),
            Some(value) => out.write_some(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_differs_from_every_some() {
        assert_eq!(None::<&str>.key_text(), "~");
        assert_eq!(Some("").key_text(), "''");
        assert_eq!(Some("~").key_text(), "'~'");
        assert_eq!(Some(None::<u8>).key_text(), "~~");
        assert_eq!(Some(Some(None::<u8>)).key_text(), "~~~");
        assert_eq!(Some(Some(3)).key_text(), "3");
    }

    #[test]
    fn some_of_a_composite_starting_with_none() {
        assert_eq!(Some((None::<u8>, 1)).key_text(), "~~-1");
        assert_eq!(None::<(Option<u8>, u8)>.key_text(), "~");
        assert_eq!(Some((Some(None::<u8>), 1)).key_text(), "~~~-1");
        assert_eq!(vec![Some((None::<u8>, 1))].key_text(), "(~-1)");
    }
}
