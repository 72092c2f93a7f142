//! [`Region`]: a named group of entries that can be expired together, and [`region!`] to
//! declare one.
//!
//! A region's identity is its [`NAME`](Region::NAME): that is what travels between instances,
//! so it must be stable across builds (never a type name) and the same on every instance.

use thiserror::Error;

/// The longest region name accepted, in bytes.
///
/// Names travel in every invalidation message for their region; a bound keeps those small
/// and lets the wire layer reject oversized input before it reaches a registry.
pub const MAX_REGION_NAME_LEN: usize = 256;

/// A strongly typed cache region: a group of entries expired together.
///
/// Implement it on a unit type, or declare one with [`region!`](crate::region!). `NAME` is the
/// region's wire identity: peers expire regions by name, so it must be the same on every
/// instance and must not change between releases. It must be 1 to
/// [`MAX_REGION_NAME_LEN`] bytes; the typed APIs check that at compile time.
///
/// ```
/// use nearcache_regions::Region;
///
/// struct Catalog;
/// impl Region for Catalog {
///     const NAME: &'static str = "catalog";
/// }
/// assert_eq!(Catalog::NAME, "catalog");
/// ```
///
/// A hand-written impl with an empty (or over-long) name fails to build once a typed API
/// uses it:
///
/// ```compile_fail
/// use nearcache_regions::{Region, Regions};
///
/// struct Nameless;
/// impl Region for Nameless {
///     const NAME: &'static str = "";
/// }
/// let _ = Regions::new().token_of::<Nameless>();
/// ```
pub trait Region: 'static {
    /// The stable wire name of the region.
    const NAME: &'static str;
}

/// Declares unit types that implement [`Region`](crate::Region).
///
/// `region!(pub Catalog = "catalog");` declares `pub struct Catalog;` (with `Debug`, `Clone`,
/// `Copy`, `Default`, `PartialEq`, `Eq`, `Hash`) whose wire name is `"catalog"`. Several
/// declarations may share one invocation, separated by `;`, and each may carry attributes
/// (doc comments included). An empty or over-long name is a compile error.
///
/// ```
/// use nearcache_regions::{region, Region};
///
/// region! {
///     /// Everything derived from the product catalog.
///     pub Catalog = "catalog";
///     pub(crate) Pricing = "pricing";
/// }
/// assert_eq!(Catalog::NAME, "catalog");
/// assert_eq!(Pricing::NAME, "pricing");
/// ```
///
/// ```compile_fail
/// nearcache_regions::region!(pub Nameless = "");
/// ```
#[macro_export]
macro_rules! region {
    ($($(#[$meta:meta])* $vis:vis $name:ident = $wire:expr);+ $(;)?) => {
        $(
            $(#[$meta])*
            #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
            $vis struct $name;

            impl $crate::Region for $name {
                const NAME: &'static str = $wire;
            }

            const _: () = ::core::assert!(
                $crate::is_valid_region_name($wire),
                "a region name must be 1 to 256 bytes long",
            );
        )+
    };
}

/// Whether `name` is acceptable as a region name: 1 to [`MAX_REGION_NAME_LEN`] bytes.
///
/// A `const fn`, so [`region!`](crate::region!) and the typed APIs check names at compile time.
pub const fn is_valid_region_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_REGION_NAME_LEN
}

/// Checks a region name that arrived at run time (from a peer, a config, an admin call).
///
/// # Errors
///
/// [`RegionNameError::Empty`] or [`RegionNameError::TooLong`].
pub fn validate_region_name(name: &str) -> Result<(), RegionNameError> {
    if name.is_empty() {
        Err(RegionNameError::Empty)
    } else if name.len() > MAX_REGION_NAME_LEN {
        Err(RegionNameError::TooLong {
            len: name.len(),
            max: MAX_REGION_NAME_LEN,
        })
    } else {
        Ok(())
    }
}

/// A region name given at run time was not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RegionNameError {
    /// The name was empty; regions need a non-empty name.
    #[error("a region name must not be empty")]
    Empty,
    /// The name was longer than the limit; use a shorter, stable name.
    #[error("a region name must be at most {max} bytes, this one has {len}")]
    TooLong {
        /// Length of the rejected name in bytes.
        len: usize,
        /// The limit ([`MAX_REGION_NAME_LEN`]).
        max: usize,
    },
}

/// Compile-time check of a typed region's name; evaluated once per region type.
pub(crate) struct CheckedName<R>(std::marker::PhantomData<R>);

impl<R: Region> CheckedName<R> {
    pub(crate) const NAME: &'static str = {
        assert!(
            is_valid_region_name(R::NAME),
            "a region name must be 1 to 256 bytes long"
        );
        R::NAME
    };
}

/// Text that names a sub-key of a region (`region_key::<Catalog>("c1")`).
///
/// Sub-keys are compared by their text, so anything that turns into the same text names the
/// same sub-key. Sub-key text has no length limit here; a long one costs its length for as
/// long as a live entry is tied to it.
///
/// Every [`CacheKey`](nearcache_keys::CacheKey) is a sub-key, and its text is its
/// [`key_text`](nearcache_keys::CacheKey::key_text) — the same on every instance, which is
/// what lets a sub-key expiry travel between them by name. Every function that ties an entry
/// to a sub-key or expires one, typed or by region name, spells the sub-key this way, so
/// `"a-b"` names one sub-key whichever of them is used (its text is `'a-b'`, because key
/// text escapes separators). Text that is already spelled — what a peer's message carries —
/// goes in as a [`SubKeyText`].
//
// The one place where a typed sub-key becomes text.
pub trait SubKey {
    /// The sub-key's text.
    fn sub_key_text(&self) -> std::borrow::Cow<'_, str>;
}

impl<T: nearcache_keys::CacheKey + ?Sized> SubKey for T {
    fn sub_key_text(&self) -> std::borrow::Cow<'_, str> {
        std::borrow::Cow::Owned(self.key_text())
    }
}

/// A sub-key given by the text that [`SubKey::sub_key_text`] made of it, taken as it is:
/// how a sub-key travels between instances. Only text that came from `sub_key_text` names
/// the sub-key it looks like; `SubKeyText::new("a-b")` is not the sub-key `"a-b"` (whose
/// text is `'a-b'`).
///
/// ```
/// use nearcache_regions::{Regions, SubKey, SubKeyText, region};
///
/// region!(Catalog = "catalog");
/// let regions = Regions::new();
/// let token = regions.key_token_of::<Catalog>("a-b");
/// let text = "a-b".sub_key_text(); // what a peer's message carries
/// regions.expire_region_key("catalog", &SubKeyText::new(&text))?;
/// assert!(token.is_expired());
/// # Ok::<(), nearcache_regions::RegionNameError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubKeyText<'a>(&'a str);

impl<'a> SubKeyText<'a> {
    /// `text`, already spelled by [`SubKey::sub_key_text`].
    pub fn new(text: &'a str) -> Self {
        SubKeyText(text)
    }

    /// The text.
    pub fn as_str(&self) -> &'a str {
        self.0
    }
}

impl SubKey for SubKeyText<'_> {
    fn sub_key_text(&self) -> std::borrow::Cow<'_, str> {
        std::borrow::Cow::Borrowed(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    region!(
        /// A documented region.
        pub(crate) Documented = "documented";
        Private = "private"
    );

    #[test]
    fn region_macro_declares_named_unit_types() {
        assert_eq!(Documented::NAME, "documented");
        assert_eq!(Private::NAME, "private");
        assert_eq!(Documented, Documented);
        assert_eq!(CheckedName::<Private>::NAME, "private");
    }

    #[test]
    fn run_time_names_are_bounded() {
        assert_eq!(validate_region_name(""), Err(RegionNameError::Empty));
        assert_eq!(validate_region_name("catalog"), Ok(()));
        let longest = "x".repeat(MAX_REGION_NAME_LEN);
        assert_eq!(validate_region_name(&longest), Ok(()));
        let too_long = "x".repeat(MAX_REGION_NAME_LEN + 1);
        assert_eq!(
            validate_region_name(&too_long),
            Err(RegionNameError::TooLong {
                len: MAX_REGION_NAME_LEN + 1,
                max: MAX_REGION_NAME_LEN
            })
        );
        assert!(
            RegionNameError::Empty.to_string().contains("empty"),
            "the message says what is wrong"
        );
    }

    #[test]
    fn sub_keys_are_their_text() {
        assert_eq!("c1".sub_key_text(), "c1");
        assert_eq!(String::from("c2").sub_key_text(), "c2");
        let key = nearcache_keys::Key::from_text("Catalog:c3");
        assert_eq!(key.sub_key_text(), "Catalog:c3");
        assert_eq!("a-b".sub_key_text(), "'a-b'", "separators are escaped");
        let spelled = "a-b".sub_key_text();
        assert_eq!(
            SubKeyText::new(&spelled).sub_key_text(),
            spelled,
            "taken as it is"
        );
    }
}
