//! Code generation: `impl CacheKey` for a struct or an enum, following the grammar of
//! `nearcache-keys` (see the derive's docs in `lib.rs` for the text it produces).

use std::collections::HashMap;

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Data, DataEnum, DataStruct, DeriveInput, Field, Fields, Ident, Member, Path};

use crate::attr::{self, Position};
use crate::bound;
use crate::errors::Errors;

/// The whole derive: checks everything, then emits the impl inside `const _: () = { ... };`.
pub(crate) fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let mut errors = Errors::default();
    let container = attr::parse(&input.attrs, Position::Container, &mut errors);
    let krate = container
        .krate
        .unwrap_or_else(|| syn::parse_quote!(::nearcache));

    let out = Ident::new("__nearcache_out", Span::mixed_site());
    let (body, kept_types) = match &input.data {
        Data::Struct(data) => struct_body(input, data, &krate, &out, &mut errors),
        Data::Enum(data) => enum_body(data, &krate, &out, &mut errors),
        Data::Union(data) => {
            errors.spanned(
                data.union_token,
                "`CacheKey` cannot be derived for a union: which field holds the value is not known; implement `CacheKey` by hand",
            );
            (TokenStream::new(), Vec::new())
        }
    };
    errors.finish()?;

    let generics = bound::with_bounds(&input.generics, kept_types.iter(), &krate);
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let name = &input.ident;
    Ok(quote! {
        const _: () = {
            #[automatically_derived]
            impl #impl_generics #krate::CacheKey for #name #ty_generics #where_clause {
                fn write_key(&self, #out: #krate::KeyWriter<'_>) {
                    #body
                }
            }
        };
    })
}

/// A field that is part of the key.
struct Kept<'a> {
    member: Member,
    field: &'a Field,
}

/// The fields of `fields` that are not skipped, reporting bad field attributes.
fn kept_fields<'a>(fields: &'a Fields, errors: &mut Errors) -> Vec<Kept<'a>> {
    let mut kept = Vec::new();
    for (index, field) in fields.iter().enumerate() {
        let attrs = attr::parse(&field.attrs, Position::Field, errors);
        if attrs.skip.is_none() {
            let member = match &field.ident {
                Some(ident) => Member::Named(ident.clone()),
                None => Member::Unnamed(syn::Index {
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    span: field.span(),
                }),
            };
            kept.push(Kept { member, field });
        }
    }
    kept
}

/// Writes the kept `values` as the grammar says: none → empty composite, one → that value
/// alone (newtypes are transparent), more → a composite.
fn write_fields(values: &[TokenStream], krate: &Path, out: &Ident) -> TokenStream {
    match values {
        [] => quote!(#out.write_composite(|_| {});),
        [only] => quote!(#krate::CacheKey::write_key(#only, #out);),
        values => {
            let c = Ident::new("__nearcache_c", Span::mixed_site());
            quote! {
                #out.write_composite(|#c| {
                    #( #c.element(#values); )*
                });
            }
        }
    }
}

fn struct_body(
    input: &DeriveInput,
    data: &DataStruct,
    krate: &Path,
    out: &Ident,
    errors: &mut Errors,
) -> (TokenStream, Vec<syn::Type>) {
    let kept = kept_fields(&data.fields, errors);
    if kept.is_empty() && !data.fields.is_empty() {
        errors.spanned(
            &input.ident,
            format!(
                "every field of `{}` is `#[cache_key(skip)]`, so all its values would share one key; keep at least one field in the key",
                input.ident
            ),
        );
    }
    // Spanned at the field's type, so "`X` is not a CacheKey" points at the field.
    let values: Vec<TokenStream> = kept
        .iter()
        .map(|k| {
            let member = &k.member;
            quote_spanned!(k.field.ty.span()=> &self.#member)
        })
        .collect();
    let types = kept.iter().map(|k| k.field.ty.clone()).collect();
    (write_fields(&values, krate, out), types)
}

fn enum_body(
    data: &DataEnum,
    krate: &Path,
    out: &Ident,
    errors: &mut Errors,
) -> (TokenStream, Vec<syn::Type>) {
    let mut arms = Vec::new();
    let mut types = Vec::new();
    let mut names: HashMap<String, &Ident> = HashMap::new();
    for variant in &data.variants {
        let attrs = attr::parse(&variant.attrs, Position::Variant, errors);
        let ident = &variant.ident;
        let name = match &attrs.rename {
            Some(lit) => lit.value(),
            None => ident.unraw().to_string(),
        };
        if let Some(earlier) = names.get(&name) {
            let message = format!(
                "variant `{ident}` writes the name `{name}` in keys, as `{earlier}` does; give one of them another `#[cache_key(rename = \"...\")]`"
            );
            match &attrs.rename {
                Some(lit) => errors.spanned(lit, message),
                None => errors.spanned(ident, message),
            }
        } else {
            names.insert(name.clone(), ident);
        }

        let kept = kept_fields(&variant.fields, errors);
        // Hygienic (mixed-site) names, located at the field's type for error messages.
        let bindings: Vec<Ident> = kept
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let span = Span::mixed_site().located_at(k.field.ty.span());
                format_ident!("__nearcache_f{}", i, span = span)
            })
            .collect();
        let members = kept.iter().map(|k| &k.member);
        let pattern = quote!(Self::#ident { #( #members: #bindings, )* .. });
        let body = if kept.is_empty() {
            quote!(#out.write_str(#name);)
        } else {
            let values: Vec<TokenStream> = std::iter::once(quote!(#name))
                .chain(bindings.iter().map(|b| quote!(#b)))
                .collect();
            write_fields(&values, krate, out)
        };
        arms.push(quote!(#pattern => { #body }));
        types.extend(kept.iter().map(|k| k.field.ty.clone()));
    }
    let body = if arms.is_empty() {
        quote!(match *self {})
    } else {
        quote!(match self { #(#arms)* })
    };
    (body, types)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn expand_text(input: TokenStream) -> String {
        expand(&syn::parse2(input).unwrap()).unwrap().to_string()
    }

    fn error_text(input: TokenStream) -> Vec<String> {
        match expand(&syn::parse2(input).unwrap()) {
            Ok(tokens) => panic!("expected errors, got {tokens}"),
            Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn output_is_wrapped_and_fully_qualified() {
        let text = expand_text(quote!(
            struct S {
                a: u8,
                b: u8,
            }
        ));
        assert!(text.starts_with("const _ : () ="), "{text}");
        assert!(
            text.contains("impl :: nearcache :: CacheKey for S"),
            "{text}"
        );
        assert!(text.contains(":: nearcache :: KeyWriter < '_ >"), "{text}");
    }

    #[test]
    fn the_crate_path_can_be_changed() {
        let text = expand_text(quote!(
            #[cache_key(crate = "my::keys")]
            struct S(u8);
        ));
        assert!(text.contains("impl my :: keys :: CacheKey for S"), "{text}");
        assert!(!text.contains("nearcache ::"), "{text}");
    }

    #[test]
    fn every_error_is_reported() {
        let errors = error_text(quote! {
            #[cache_key(rename = "x")]
            enum E {
                #[cache_key(skip)]
                A,
                #[cache_key(rename = "A")]
                B(#[cache_key(rename = "f")] u8),
            }
        });
        assert_eq!(errors.len(), 4, "{errors:#?}");
    }

    #[test]
    fn skipping_every_field_is_an_error_for_structs_only() {
        let errors = error_text(quote!(
            struct S {
                #[cache_key(skip)]
                a: u8,
            }
        ));
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("all its values would share one key"));
        expand_text(quote!(
            enum E {
                A {
                    #[cache_key(skip)]
                    a: u8,
                },
            }
        ));
        expand_text(quote!(
            struct Unit;
        ));
        expand_text(quote!(
            struct Empty {}
        ));
    }
}
