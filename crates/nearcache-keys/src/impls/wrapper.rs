//! Pointers and wrappers write what they point to, so `&T`, `Box<T>`, `Arc<T>`, `Rc<T>` and
//! `Cow<T>` all give `T`'s text. [`Key`] is finished key text: verbatim at the top level
//! (`Key::of(&key) == key`), a string atom when nested.

use std::borrow::Cow;
use std::rc::Rc;
use std::sync::Arc;

use crate::{CacheKey, Key, KeyWriter};

macro_rules! forward {
    ($($wrapper:ty),* $(,)?) => {$(
        impl<T: CacheKey + ?Sized> CacheKey for $wrapper {
            fn write_key(&self, out: KeyWriter<'_>) {
                (**self).write_key(out);
            }
        }
    )*};
}

forward!(&T, &mut T, Box<T>, Rc<T>, Arc<T>);

impl<T> CacheKey for Cow<'_, T>
where
    T: CacheKey + ToOwned + ?Sized,
{
    fn write_key(&self, out: KeyWriter<'_>) {
        (**self).write_key(out);
    }
}

impl CacheKey for Key {
    fn write_key(&self, out: KeyWriter<'_>) {
        out.write_key_text(self.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrappers_write_what_they_point_to() {
        let expected = "a-b".key_text();
        assert_eq!((&"a-b").key_text(), expected);
        assert_eq!(Box::<str>::from("a-b").key_text(), expected);
        assert_eq!(Rc::<str>::from("a-b").key_text(), expected);
        assert_eq!(Arc::<str>::from("a-b").key_text(), expected);
        assert_eq!(Cow::Borrowed("a-b").key_text(), expected);
        assert_eq!(Cow::<str>::Owned("a-b".into()).key_text(), expected);
        assert_eq!(Cow::Borrowed(&[1_u8, 2][..]).key_text(), "0102");
    }

    #[test]
    fn a_key_is_verbatim_alone_and_an_atom_when_nested() {
        let key = Key::from_text("T:m-1");
        assert_eq!(Key::of(&key), key);
        assert_eq!(Key::of(&(&key, 2)).as_str(), "'T:m-1'-2");
    }

    #[test]
    fn trait_objects_work() {
        let parts: [&dyn CacheKey; 2] = [&1_u8, &"x-y"];
        assert_eq!(parts.key_text(), "1-'x-y'");
    }
}
