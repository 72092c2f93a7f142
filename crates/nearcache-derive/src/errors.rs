//! Collects every error found in a derive input, so the user sees all bad attributes at
//! once instead of fixing them one compile at a time (serde_derive's `Ctxt` pattern).

use std::fmt::Display;

use quote::ToTokens;

/// The errors found so far.
#[derive(Default)]
pub(crate) struct Errors {
    list: Vec<syn::Error>,
}

impl Errors {
    /// Records `message`, pointing at `tokens`.
    pub(crate) fn spanned(&mut self, tokens: impl ToTokens, message: impl Display) {
        self.list.push(syn::Error::new_spanned(tokens, message));
    }

    /// Records an error that already has its span.
    pub(crate) fn push(&mut self, error: syn::Error) {
        self.list.push(error);
    }

    /// `Ok` if nothing was recorded, otherwise every error combined into one.
    pub(crate) fn finish(self) -> syn::Result<()> {
        let mut errors = self.list.into_iter();
        let Some(mut combined) = errors.next() else {
            return Ok(());
        };
        for error in errors {
            combined.combine(error);
        }
        Err(combined)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_errors_is_ok() {
        assert!(Errors::default().finish().is_ok());
    }

    #[test]
    fn all_errors_are_kept() {
        let mut errors = Errors::default();
        errors.spanned(quote::quote!(a), "first");
        errors.spanned(quote::quote!(b), "second");
        let combined = errors.finish().err().map(|e| e.into_iter().count());
        assert_eq!(combined, Some(2));
    }
}
