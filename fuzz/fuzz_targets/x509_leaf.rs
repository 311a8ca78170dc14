//! A peer's leaf certificate (DER straight from the TLS handshake): no panic,
//! and every leaf `parse_leaf` accepts, read again with x509-parser directly
//! (each extension, duplicates included), has exactly one URI SAN, which is
//! the returned ID byte for byte; that ID parses back to itself and its trust
//! domain; no basicConstraints says CA and every keyUsage has
//! digitalSignature without keyCertSign or cRLSign; the validity and serial
//! are the DER's.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use certs::{SpiffeId, TrustDomain};
use libfuzzer_sys::fuzz_target;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

fuzz_target!(|der: &[u8]| {
    let Ok(leaf) = certs::x509::parse_leaf(der) else { return };
    let (_, cert) = X509Certificate::from_der(der).expect("an accepted leaf is DER X.509");

    let mut uris = Vec::new();
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                uris.extend(san.general_names.iter().filter_map(|n| match n {
                    GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                }));
            }
            ParsedExtension::BasicConstraints(bc) => assert!(!bc.ca, "an accepted leaf is a CA: {leaf:?}"),
            ParsedExtension::KeyUsage(ku) => {
                assert!(ku.digital_signature() && !ku.key_cert_sign() && !ku.crl_sign(), "{ku:?}: {leaf:?}")
            }
            _ => {}
        }
    }
    assert_eq!(uris, [leaf.id.as_str()], "the one URI SAN is the ID");

    let again: SpiffeId = leaf.id.as_str().parse().expect("the ID parses back");
    assert_eq!(again, leaf.id);
    assert_eq!(again.trust_domain(), leaf.id.trust_domain());
    let domain = TrustDomain::new(leaf.id.trust_domain_name()).expect("its trust domain is one");
    assert_eq!(domain, leaf.id.trust_domain());
    assert!(leaf.id.as_str().starts_with(&domain.id_string()), "{leaf:?}");

    let time = |unix: i64| u64::try_from(unix).map_or(UNIX_EPOCH, |s| UNIX_EPOCH + Duration::from_secs(s));
    let validity = cert.validity();
    assert_eq!(leaf.not_before, time(validity.not_before.timestamp()));
    assert_eq!(leaf.not_after, time(validity.not_after.timestamp()));
    assert!(!leaf.is_expired_at(leaf.not_after) && leaf.is_expired_at(leaf.not_after + Duration::from_secs(1)));
    assert_eq!(leaf.serial, cert.raw_serial_as_string());
});
