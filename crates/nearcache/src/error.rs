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
    /// `connect()` was called but `backplane.redis_url` is not set.
    #[error(
        "no Redis URL configured: set backplane.redis_url, or pass a backplane to .backplane()"
    )]
    NoRedisUrl,
    /// `backplane.tls_ca_file` could not be read.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    #[error(
        "cannot read backplane.tls_ca_file {}; it must name a readable PEM file \
         with the CA certificate of the Redis server",
        path.display()
    )]
    TlsCaFile {
        /// The configured path.
        path: std::path::PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The Redis backplane could not connect.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    #[error(transparent)]
    Redis(nearcache_redis::RedisBackplaneError),
}
