//! The one crypto provider of the process: aws-lc-rs, for TLS, signatures
//! and randomness alike.

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

/// The process's crypto provider.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider())).clone()
}

/// Installs [`provider`] as the process default, for crates that ask for it.
/// Safe to call more than once.
pub fn install_default_provider() {
    let _already_installed = provider().as_ref().clone().install_default();
}
