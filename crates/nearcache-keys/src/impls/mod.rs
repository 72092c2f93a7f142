//! [`CacheKey`](crate::CacheKey) for the types people key by. Each file holds one family;
//! the text each writes is in the [crate docs](crate#grammar).

mod option;
mod primitive;
mod seq;
mod text;
mod tuple;
mod wrapper;
