//! A peer's leaf certificate (DER straight from the TLS handshake): no panic,
//! and an accepted leaf names exactly one SPIFFE ID.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|der: &[u8]| {
    if let Ok(leaf) = certs::x509::parse_leaf(der) {
        assert!(leaf.id.as_str().starts_with("spiffe://"));
    }
});
