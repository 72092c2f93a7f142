//! The `#[cache_key(...)]` attributes: what each means, where it may go, and the errors for
//! everything else.
//!
//! | attribute | goes on | meaning |
//! |---|---|---|
//! | `crate = "path"` | the struct or enum | where `CacheKey` and `KeyWriter` live (default `::nearcache`) |
//! | `rename = "name"` | an enum variant | the name the variant writes in the key |
//! | `skip` | a field | the field is not part of the key |

use proc_macro2::Span;
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{Attribute, Expr, ExprLit, Lit, LitStr, Path, Token};

use crate::errors::Errors;

/// Where an attribute was written; decides which keys are allowed.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Position {
    Container,
    Variant,
    Field,
}

/// The attributes of one item.
#[derive(Default)]
pub(crate) struct Attrs {
    /// `crate = "..."`, parsed.
    pub(crate) krate: Option<Path>,
    /// `rename = "..."`.
    pub(crate) rename: Option<LitStr>,
    /// `skip`, with its span.
    pub(crate) skip: Option<Span>,
}

/// Parses every `#[cache_key(...)]` in `attrs`, recording each error and going on.
pub(crate) fn parse(attrs: &[Attribute], position: Position, errors: &mut Errors) -> Attrs {
    let mut out = Attrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("cache_key")) {
        let result = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("crate") {
                let value = string_value(&meta, "crate", errors)?;
                if let Some(why) = misplaced("crate", position) {
                    errors.spanned(&meta.path, why);
                } else if let Some(lit) = value {
                    match lit.parse::<Path>() {
                        Err(_) => errors.spanned(
                            &lit,
                            "`crate` must be a path to the crate that exports `CacheKey`, like `crate = \"nearcache\"`",
                        ),
                        Ok(_) if out.krate.is_some() => {
                            errors.spanned(&meta.path, "duplicate `crate` attribute")
                        }
                        Ok(path) => out.krate = Some(path),
                    }
                }
            } else if meta.path.is_ident("rename") {
                let value = string_value(&meta, "rename", errors)?;
                if takes(&meta.path, "rename", position, out.rename.is_some(), errors) {
                    out.rename = value;
                }
            } else if meta.path.is_ident("skip") {
                if meta.input.peek(Token![=]) || meta.input.peek(syn::token::Paren) {
                    skip_value(&meta)?;
                    errors.spanned(&meta.path, "`skip` takes no value: write `#[cache_key(skip)]`");
                }
                if takes(&meta.path, "skip", position, out.skip.is_some(), errors) {
                    out.skip = Some(meta.path.span());
                }
            } else {
                skip_value(&meta)?;
                let allowed = match position {
                    Position::Container => "on a struct or enum is `crate = \"...\"`",
                    Position::Variant => "on an enum variant is `rename = \"...\"`",
                    Position::Field => "on a field is `skip`",
                };
                let name = path_text(&meta.path);
                errors.spanned(
                    &meta.path,
                    format!("unknown `cache_key` attribute `{name}`; the one allowed {allowed}"),
                );
            }
            Ok(())
        });
        if let Err(error) = result {
            errors.push(error);
        }
    }
    out
}

/// Why attribute `name` may not go at `position` (`None`: it goes there, or `name` is not
/// one of ours, which the caller reports).
fn misplaced(name: &str, position: Position) -> Option<&'static str> {
    use Position::{Container, Field, Variant};
    Some(match (name, position) {
        ("crate", Variant | Field) => {
            "`crate` goes on the struct or enum: `#[cache_key(crate = \"...\")]` above it"
        }
        ("rename", Container) => {
            "`rename` applies to enum variants: the type's name is not part of its key text"
        }
        ("rename", Field) => {
            "`rename` applies to enum variants: field names are not part of the key text"
        }
        ("skip", Variant) => "`skip` applies to fields: every variant is part of its enum's key",
        ("skip", Container) => {
            "`skip` applies to fields: a type that is not part of a key needs no `CacheKey`"
        }
        _ => return None,
    })
}

/// Whether attribute `name` written at `position` is taken; when it is out of place, or the
/// item `already` has one, that is recorded as an error instead.
fn takes(path: &Path, name: &str, position: Position, already: bool, errors: &mut Errors) -> bool {
    if let Some(why) = misplaced(name, position) {
        errors.spanned(path, why);
    } else if already {
        errors.spanned(path, format!("duplicate `{name}` attribute"));
    } else {
        return true;
    }
    false
}

/// Reads `= "text"`; a value that is not a string literal is recorded as an error (`None`).
fn string_value(
    meta: &ParseNestedMeta<'_>,
    name: &str,
    errors: &mut Errors,
) -> syn::Result<Option<LitStr>> {
    let expr: Expr = meta.value()?.parse()?;
    if let Expr::Lit(ExprLit {
        lit: Lit::Str(lit), ..
    }) = expr
    {
        return Ok(Some(lit));
    }
    errors.spanned(
        &expr,
        format!("`{name}` takes a string literal: `{name} = \"...\"`"),
    );
    Ok(None)
}

/// Consumes whatever follows an attribute key we will not use (`= value` or `(...)`), so
/// the attributes after it are still read.
fn skip_value(meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        let _: Expr = meta.value()?.parse()?;
    } else if meta.input.peek(syn::token::Paren) {
        let content;
        syn::parenthesized!(content in meta.input);
        let _: proc_macro2::TokenStream = content.parse()?;
    }
    Ok(())
}

/// A path as the user wrote it, for messages (`a::b`, not `a :: b`).
fn path_text(path: &Path) -> String {
    quote::ToTokens::to_token_stream(path)
        .to_string()
        .replace(' ', "")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn attrs(tokens: proc_macro2::TokenStream) -> Vec<Attribute> {
        let item: syn::DeriveInput = syn::parse2(quote::quote!(#tokens struct S;)).unwrap();
        item.attrs
    }

    fn messages(result: syn::Result<()>) -> Vec<String> {
        result
            .err()
            .map(|e| e.into_iter().map(|e| e.to_string()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn reads_each_attribute_where_it_belongs() {
        let mut errors = Errors::default();
        let container = parse(
            &attrs(quote::quote!(#[cache_key(crate = "my::keys")])),
            Position::Container,
            &mut errors,
        );
        let variant = parse(
            &attrs(quote::quote!(#[cache_key(rename = "x")])),
            Position::Variant,
            &mut errors,
        );
        let field = parse(
            &attrs(quote::quote!(#[doc = "other attributes are ignored"] #[cache_key(skip)])),
            Position::Field,
            &mut errors,
        );
        assert!(messages(errors.finish()).is_empty());
        assert!(container.krate.is_some_and(|p| p.segments.len() == 2));
        assert_eq!(variant.rename.map(|l| l.value()), Some("x".to_owned()));
        assert!(field.skip.is_some());
    }

    #[test]
    fn reports_every_error_and_keeps_reading() {
        let mut errors = Errors::default();
        let field = parse(
            &attrs(quote::quote!(
                #[cache_key(rename = "a", bogus = 1, skip)]
                #[cache_key(skip, crate = "x")]
            )),
            Position::Field,
            &mut errors,
        );
        assert!(field.skip.is_some());
        let messages = messages(errors.finish());
        assert_eq!(messages.len(), 4, "{messages:#?}");
        assert!(messages[0].contains("field names are not part of the key text"));
        assert!(messages[1].contains("unknown `cache_key` attribute `bogus`"));
        assert!(messages[2].contains("duplicate `skip`"));
        assert!(messages[3].contains("`crate` goes on the struct or enum"));
    }

    #[test]
    fn values_must_be_string_literals_and_paths() {
        let mut errors = Errors::default();
        parse(
            &attrs(quote::quote!(#[cache_key(crate = "not a path", crate = nearcache)])),
            Position::Container,
            &mut errors,
        );
        let messages = messages(errors.finish());
        assert_eq!(messages.len(), 2, "{messages:#?}");
        assert!(messages[0].contains("must be a path"));
        assert!(messages[1].contains("takes a string literal"));
    }
}
