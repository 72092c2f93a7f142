//! Tuples: composites of their fields. `()` is the empty composite; a 1-tuple is written as
//! its only field (like a newtype struct), since one field needs no delimiting.

use crate::{CacheKey, KeyWriter};

impl CacheKey for () {
    fn write_key(&self, out: KeyWriter<'_>) {
        out.write_composite(|_| {});
    }
}

impl<A: CacheKey> CacheKey for (A,) {
    fn write_key(&self, out: KeyWriter<'_>) {
        self.0.write_key(out);
    }
}

macro_rules! tuple {
    ($($name:ident $index:tt),+) => {
        impl<$($name: CacheKey),+> CacheKey for ($($name,)+) {
            fn write_key(&self, out: KeyWriter<'_>) {
                out.write_composite(|c| {
                    $(c.element(&self.$index);)+
                });
            }
        }
    };
}

tuple!(A 0, B 1);
tuple!(A 0, B 1, C 2);
tuple!(A 0, B 1, C 2, D 3);
tuple!(A 0, B 1, C 2, D 3, E 4);
tuple!(A 0, B 1, C 2, D 3, E 4, F 5);
tuple!(A 0, B 1, C 2, D 3, E 4, F 5, G 6);
tuple!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);
tuple!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8);
tuple!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9);
tuple!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10);
tuple!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10, L 11);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuples_are_composites() {
        assert_eq!(
            ("Prop1Value", "Prop2Value").key_text(),
            "Prop1Value-Prop2Value"
        );
        assert_eq!((1, (2, 3), "x").key_text(), "1-(2-3)-x");
        assert_eq!(
            (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12).key_text(),
            "1-2-3-4-5-6-7-8-9-10-11-12"
        );
    }

    #[test]
    fn unit_and_one_tuples() {
        assert_eq!(().key_text(), "");
        assert_eq!(((), ()).key_text(), "()-()");
        assert_eq!(("x",).key_text(), "x");
        assert_eq!((("x",), "y").key_text(), "x-y");
    }

    #[test]
    fn the_classic_collision_is_gone() {
        assert_ne!(("a-b", "c").key_text(), ("a", "b-c").key_text());
        assert_eq!(("a-b", "c").key_text(), "'a-b'-c");
        assert_eq!(("a", "b-c").key_text(), "a-'b-c'");
    }

    #[test]
    fn nested_tuples_cannot_be_forged_by_strings() {
        assert_ne!((("a", "b"), "c").key_text(), ("(a-b)", "c").key_text());
        assert_ne!((("a", "b"), "c").key_text(), ("a", ("b", "c")).key_text());
    }
}
