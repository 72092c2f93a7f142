//! The [`CacheKey`] trait: how a value writes its part of a key.

use crate::buffer;
use crate::writer::KeyWriter;

/// A value that can be (part of) a cache key.
///
/// An impl writes the value through the [`KeyWriter`] it is given: one atom
/// ([`write_str`](KeyWriter::write_str), [`write_i64`](KeyWriter::write_i64),
/// [`write_u64`](KeyWriter::write_u64), [`write_display`](KeyWriter::write_display),
/// [`write_bytes`](KeyWriter::write_bytes)), one option
/// ([`write_none`](KeyWriter::write_none), [`write_some`](KeyWriter::write_some)), one
/// composite ([`write_composite`](KeyWriter::write_composite),
/// [`write_seq`](KeyWriter::write_seq)), or by handing the writer to another `CacheKey`. The
/// writer escapes and delimits, so any impl built from these calls keeps key text
/// injective — as long as it writes everything that tells two values apart.
///
/// Usually derived (`#[derive(CacheKey)]` from `nearcache`, feature `derive`). Provided for
/// integers (and `NonZero` ones), `bool`, `char`, floats, strings, byte arrays, `Option`, tuples up to 12,
/// slices, arrays, `Vec`, `BTreeSet`, `BTreeMap`, `Cow`, references, `Box`, `Rc`, `Arc`,
/// and [`Key`](crate::Key). See the [crate docs](crate#grammar) for the text each writes.
///
/// Not provided for `HashMap`/`HashSet`: their iteration order differs between runs and
/// processes, so equal maps would give different keys. Use `BTreeMap`/`BTreeSet`.
///
/// # A right impl and a wrong one
///
/// ```
/// use nearcache_keys::{CacheKey, Key, KeyWriter};
///
/// struct Range { from: u32, to: u32 }
///
/// // Right: each field is its own element; the writer puts `-` between them.
/// impl CacheKey for Range {
///     fn write_key(&self, out: KeyWriter<'_>) {
///         out.write_composite(|c| {
///             c.element(&self.from).element(&self.to);
///         });
///     }
/// }
/// assert_eq!(Key::of(&Range { from: 1, to: 20 }).as_str(), "1-20");
/// assert_ne!(Key::of(&Range { from: 1, to: 20 }), Key::of(&Range { from: 12, to: 0 }));
///
/// struct GluedRange { from: u32, to: u32 }
///
/// // Wrong: the fields are glued into one string before the writer sees them, so the
/// // writer cannot delimit them. (A writer takes one value, so this is the only way to
/// // glue: through text of your own.)
/// impl CacheKey for GluedRange {
///     fn write_key(&self, out: KeyWriter<'_>) {
///         out.write_str(&format!("{}{}", self.from, self.to));
///     }
/// }
/// // (1, 20) and (12, 0) now share the key "120".
/// assert_eq!(
///     Key::of(&GluedRange { from: 1, to: 20 }),
///     Key::of(&GluedRange { from: 12, to: 0 }),
/// );
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be part of a cache key: it does not implement `CacheKey`",
    label = "not a `CacheKey`",
    note = "derive it (`#[derive(CacheKey)]`) or implement it; a struct field that should not be part of the key can be marked `#[cache_key(skip)]`",
    note = "`HashMap` and `HashSet` are not keys on purpose (their order differs between processes): use `BTreeMap` or `BTreeSet`"
)]
pub trait CacheKey {
    /// Writes this value's part of a key.
    fn write_key(&self, out: KeyWriter<'_>);

    /// The key text of this value on its own (composites without their outer parentheses).
    ///
    /// This is the text of [`Key::of(self)`](crate::Key::of); regions use it for sub-keys, so
    /// the same value gives the same text on every instance.
    ///
    /// ```
    /// use nearcache_keys::CacheKey;
    ///
    /// assert_eq!("c1".key_text(), "c1");
    /// assert_eq!(String::from("c1").key_text(), "c1");
    /// assert_eq!(("a-b", 7).key_text(), "'a-b'-7");
    /// ```
    fn key_text(&self) -> String {
        buffer::with_top_level(self, |text| text.to_owned())
    }

    /// Writes a slice of this type. The default writes a composite of the items; `u8`
    /// overrides it to write hex, so `[u8; 16]`, `&[u8]` and `Vec<u8>` read as hex digits.
    fn write_slice(items: &[Self], out: KeyWriter<'_>)
    where
        Self: Sized,
    {
        out.write_seq(items);
    }
}
