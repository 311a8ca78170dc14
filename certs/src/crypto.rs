//! The one crypto provider of the process: aws-lc-rs, for TLS, signatures
//! and randomness alike.

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

/// The process's crypto provider: aws-lc-rs's defaults (the X25519MLKEM768
/// hybrid key exchange first), with TLS 1.3's AES-128-GCM-SHA256 suite
/// preferred, as BoringSSL and Go order them. Its SHA-256 transcript and
/// key schedule run on the CPU's SHA extensions where SHA-384's do not: a
/// full mTLS handshake costs ~15% less CPU (`bench/README.md`). AES-256
/// and ChaCha20 stay offered; a peer's own preference still applies.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let mut provider = rustls::crypto::aws_lc_rs::default_provider();
            provider.cipher_suites.sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
            Arc::new(provider)
        })
        .clone()
}

/// Installs [`provider`] as the process default, for crates that ask for it.
/// Safe to call more than once.
pub fn install_default_provider() {
    let _already_installed = provider().as_ref().clone().install_default();
}

#[cfg(test)]
mod tests {
    /// AES-128-GCM-SHA256 first, every default suite still there.
    #[test]
    fn aes_128_gcm_is_preferred_and_nothing_is_dropped() {
        let ours: Vec<_> = super::provider().cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(ours.first(), Some(&rustls::CipherSuite::TLS13_AES_128_GCM_SHA256));
        let mut defaults: Vec<_> =
            rustls::crypto::aws_lc_rs::default_provider().cipher_suites.iter().map(|s| s.suite()).collect();
        let mut sorted = ours.clone();
        defaults.sort_by_key(|s| u16::from(*s));
        sorted.sort_by_key(|s| u16::from(*s));
        assert_eq!(sorted, defaults);
    }
}
