//! Bearer tokens and JWKS documents from the network: no panic, and a token
//! is never accepted by an empty key set.
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy::jwt::{ALGORITHMS, IssuerConfig, KeySet, issuer_of, kid_of, verify};

fuzz_target!(|input: (&str, &[u8])| {
    let (token, jwks) = input;
    let _ = kid_of(token);
    let _ = issuer_of(token);
    let mut config = IssuerConfig::entra("https://login.example", "tenant", vec!["api://a".into()], 60);
    config.algorithms = ALGORITHMS.to_vec();
    config.roles_claim = "realm_access.roles".into();
    let empty = KeySet::default();
    assert!(!matches!(verify(token, &empty, &config, 1_800_000_000), Ok(Some(_))));
    if let Ok(keys) = KeySet::from_jwks(jwks) {
        let _ = verify(token, &keys, &config, 1_800_000_000);
    }
});
