//! Numbers, `bool` and `char`: atoms of their usual text.
//!
//! Integers are decimal (`-7` contains the reserved `-`, so it is quoted: `'-7'`). Floats are
//! their shortest round-trip decimal (`Display`): `1.5`, `'-0.25'`, `1e300` in full, `inf`,
//! `'-inf'`. Two float keys are equal only when the floats are the same number, with two
//! documented exceptions: every NaN is written `NaN` (payload and sign are not kept), and
//! `-0.0` (`'-0'`) is a different key from `0.0` (`0`) although the two compare equal.

use std::num::NonZero;

use crate::{CacheKey, KeyWriter};

macro_rules! display_atom {
    ($($t:ty),* $(,)?) => {$(
        impl CacheKey for $t {
            fn write_key(&self, out: KeyWriter<'_>) {
                out.write_display(self);
            }
        }
    )*};
}

display_atom!(i128, u128, bool, f32, f64);

macro_rules! int_atom {
    ($method:ident($wide:ty): $($t:ty),* $(,)?) => {$(
        impl CacheKey for $t {
            fn write_key(&self, out: KeyWriter<'_>) {
                // Widening: every one of these fits in 64 bits on every target Rust supports
                // (`isize`/`usize` included), so the fallback is never taken.
                out.$method(<$wide>::try_from(*self).unwrap_or(<$wide>::MAX));
            }
        }
    )*};
}

int_atom!(write_i64(i64): i8, i16, i32, i64, isize);
int_atom!(write_u64(u64): u16, u32, u64, usize);

macro_rules! non_zero {
    ($($t:ty),* $(,)?) => {$(
        impl CacheKey for NonZero<$t> {
            fn write_key(&self, out: KeyWriter<'_>) {
                self.get().write_key(out);
            }
        }
    )*};
}

non_zero!(
    i8, i16, i32, i64, i128, isize, u8, u16, u32, u64, u128, usize
);

impl CacheKey for u8 {
    fn write_key(&self, out: KeyWriter<'_>) {
        out.write_u64(u64::from(*self));
    }

    /// Byte strings are hex: `[0xde, 0xad]` → `dead`.
    fn write_slice(items: &[Self], out: KeyWriter<'_>) {
        out.write_bytes(items);
    }
}

impl CacheKey for char {
    fn write_key(&self, out: KeyWriter<'_>) {
        out.write_str(self.encode_utf8(&mut [0; 4]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_decimal() {
        assert_eq!(0_u8.key_text(), "0");
        assert_eq!(255_u8.key_text(), "255");
        assert_eq!(u128::MAX.key_text(), u128::MAX.to_string());
        assert_eq!(i64::MIN.key_text(), format!("'{}'", i64::MIN));
        assert_eq!((-7_i32).key_text(), "'-7'");
        assert_eq!(42_usize.key_text(), "42");
        assert_eq!(NonZero::new(9_u64).map(|n| n.key_text()), Some("9".into()));
        assert_eq!(
            NonZero::new(-9_i8).map(|n| n.key_text()),
            Some("'-9'".into())
        );
    }

    #[test]
    fn bools_and_chars() {
        assert_eq!(true.key_text(), "true");
        assert_eq!(false.key_text(), "false");
        assert_eq!('x'.key_text(), "x");
        assert_eq!('ß'.key_text(), "ß");
        assert_eq!('-'.key_text(), "'-'");
        assert_eq!('\''.key_text(), "''''");
    }

    #[test]
    fn floats_are_shortest_round_trip_decimal() {
        assert_eq!(1.5_f64.key_text(), "1.5");
        assert_eq!(0.1_f32.key_text(), "0.1");
        assert_eq!((-0.25_f64).key_text(), "'-0.25'");
        assert_eq!(f64::INFINITY.key_text(), "inf");
        assert_eq!(f64::NEG_INFINITY.key_text(), "'-inf'");
        assert_eq!(1e21_f64.key_text(), "1000000000000000000000");
    }

    #[test]
    fn float_exceptions_nan_and_negative_zero() {
        let other_nan = f64::from_bits(f64::NAN.to_bits() ^ 1);
        assert!(other_nan.is_nan());
        assert_eq!(f64::NAN.key_text(), "NaN");
        assert_eq!(other_nan.key_text(), "NaN");
        assert_eq!((-f64::NAN).key_text(), "NaN");
        assert_eq!(0.0_f64.key_text(), "0");
        assert_eq!((-0.0_f64).key_text(), "'-0'");
    }

    #[test]
    fn distinct_floats_have_distinct_text() {
        let values = [
            0.1_f64,
            0.1 + f64::EPSILON,
            1.0,
            1.0 + f64::EPSILON,
            1e-300,
            1e300,
        ];
        for (i, a) in values.iter().enumerate() {
            for b in &values[i + 1..] {
                assert_ne!(a.key_text(), b.key_text(), "{a} vs {b}");
            }
        }
    }
}
