//! TLS set-up for `rediss://`: the rustls crypto provider.
//!
//! rustls 0.23 needs a process-wide crypto provider. This crate builds rustls with `ring`
//! only (lighter to compile than aws-lc-rs, which needs cmake and a C toolchain) and installs
//! it as the process default before the first TLS connection, unless the application already
//! installed one (then that one is used, whichever it is).

/// Makes sure rustls has a process-wide crypto provider: installs ring's if none is set.
/// Never panics; safe to call any number of times, from any thread.
pub(crate) fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err means another thread or the application installed one first: use theirs.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installing_twice_is_harmless() {
        ensure_crypto_provider();
        ensure_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
