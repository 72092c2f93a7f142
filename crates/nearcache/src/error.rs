//! The facade's error types.

pub use nearcache_store::{
    FactoryTimeout, FactoryTimeoutDetails, LoadError, OptionsError, TypeMismatch,
    TypeMismatchDetails, WouldDeadlock, WouldDeadlockDetails,
};

/// Why a [`Cache`](crate::Cache) could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// An option is out of range. Displays as the option's own error, which names it.
    #[error(transparent)]
    InvalidOptions(OptionsError),
    /// A backplane option is out of range.
    #[error("invalid option backplane.{option}: {problem}")]
    InvalidBackplaneOption {
        /// The option's name in [`BackplaneOptions`](crate::BackplaneOptions).
        option: &'static str,
        /// What is wrong and what to use instead.
        problem: &'static str,
    },
    /// A backplane needs a tokio runtime for its background tasks.
    #[error(
        "a cache with a backplane must be built inside a tokio runtime \
         (in an async fn under #[tokio::main], or after Runtime::enter())"
    )]
    NoRuntime,
    /// `connect()` was called but `backplane.redis` is not set, or sets no `url` (a file's
    /// `[backplane.redis]` section without one: there is no default Redis to connect to).
    #[error(
        "no Redis URL configured: set backplane.redis.url (in a [backplane.redis] section), \
         or pass a backplane to .backplane()"
    )]
    NoRedisUrl,
    /// The Redis backplane could not connect.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    #[error(transparent)]
    Redis(nearcache_redis::RedisBackplaneError),
}
