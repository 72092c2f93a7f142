//! Where-clause bounds for generic types: `T: CacheKey` for each type parameter that appears
//! in a field that is part of the key, as serde does. Parameters used only in skipped fields
//! (a `PhantomData<T>`, a handle) get no bound.

use std::collections::BTreeSet;

use proc_macro2::{TokenStream, TokenTree};
use quote::ToTokens;
use syn::{Generics, Ident, Path, Type};

/// `generics` with `T: #krate::CacheKey` added for every type parameter mentioned in `used`.
pub(crate) fn with_bounds<'a>(
    generics: &Generics,
    used: impl IntoIterator<Item = &'a Type>,
    krate: &Path,
) -> Generics {
    let params: BTreeSet<&Ident> = generics.type_params().map(|p| &p.ident).collect();
    let mut mentioned = BTreeSet::new();
    for ty in used {
        collect_idents(ty.to_token_stream(), &params, &mut mentioned);
    }
    let mut generics = generics.clone();
    if mentioned.is_empty() {
        return generics;
    }
    let where_clause = generics.make_where_clause();
    for ident in mentioned {
        where_clause
            .predicates
            .push(syn::parse_quote!(#ident: #krate::CacheKey));
    }
    generics
}

/// Adds to `found` every identifier of `tokens` (at any depth) that is one of `params`.
///
/// Works on tokens, so a parameter inside a macro type or a qualified path counts too.
fn collect_idents(tokens: TokenStream, params: &BTreeSet<&Ident>, found: &mut BTreeSet<Ident>) {
    for tree in tokens {
        match tree {
            TokenTree::Ident(ident) => {
                if params.contains(&&ident) {
                    found.insert(ident);
                }
            }
            TokenTree::Group(group) => collect_idents(group.stream(), params, found),
            TokenTree::Punct(_) | TokenTree::Literal(_) => {}
        }
    }
}

/// The where clause as text, for tests.
#[cfg(test)]
fn bound_text(generics: &Generics) -> String {
    let where_clause = &generics.where_clause;
    quote::quote!(#where_clause).to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn bounds_only_parameters_used_in_kept_fields() {
        let input: syn::DeriveInput = syn::parse_quote! {
            struct S<'a, T, U, V, const N: usize> where V: Clone {
                a: &'a [Vec<T>; N],
                b: Option<Box<U>>,
                skipped: PhantomData<V>,
            }
        };
        let syn::Data::Struct(data) = &input.data else {
            unreachable!()
        };
        let kept = data.fields.iter().take(2).map(|f| &f.ty);
        let krate: Path = syn::parse_quote!(::nearcache);
        let generics = with_bounds(&input.generics, kept, &krate);
        assert_eq!(
            bound_text(&generics),
            "where V : Clone , T : :: nearcache :: CacheKey , U : :: nearcache :: CacheKey"
        );
    }

    #[test]
    fn no_parameters_no_where_clause() {
        let generics: Generics = syn::parse_quote!(<'a>);
        let ty: Type = syn::parse_quote!(&'a str);
        let krate: Path = syn::parse_quote!(::nearcache);
        assert!(with_bounds(&generics, [&ty], &krate).where_clause.is_none());
    }
}
