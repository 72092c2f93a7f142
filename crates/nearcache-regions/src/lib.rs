//! Change tokens, strongly typed regions with sub-keys, and the global region.
//!
//! A cache entry holds [`ChangeToken`]s: the global one, and one for each region (and region
//! sub-key) it was tied to. Expiring a region flips its token and installs a fresh one, so
//! the cost is O(1) whatever the number of entries; the store stops returning the entries at
//! once and purges them afterwards.
//!
//! - [`Region`] and [`region!`] declare strongly typed regions with a stable wire name.
//! - [`Regions`] is one cache's registry of current tokens. It is per cache, never a process
//!   global: two caches in one process are independent.
//! - [`SubKey`] is what names a region's sub-key (`region_key::<Catalog>("c1")`).
//!
//! ```
//! use nearcache_regions::{Regions, region};
//!
//! region!(pub Catalog = "catalog");
//!
//! let regions = Regions::new();
//! let held_by_an_entry = regions.token_of::<Catalog>();
//! regions.expire_region("catalog")?; // what a peer's message does, by name
//! assert!(held_by_an_entry.is_expired());
//! # Ok::<(), nearcache_regions::RegionNameError>(())
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod region;
mod registry;
mod token;

pub use region::{
    MAX_REGION_NAME_LEN, Region, RegionNameError, SubKey, SubKeyText, is_valid_region_name,
    validate_region_name,
};
pub use registry::Regions;
pub use token::ChangeToken;
