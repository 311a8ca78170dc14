//! Client chains a bundle's verifier has accepted, so a caller that opens
//! another connection with the same SVID is not verified against its CA
//! again: of the three ECDSA verifications in a full mTLS handshake (the
//! CA's signature on the caller's SVID, the caller's CertificateVerify, and
//! our own signature), that one is about a fifth of the handshake's
//! instructions (bench/README.md).
//!
//! The answer is the one webpki would give again: it depends only on the
//! chain's bytes, the bundle's CAs and the time. So only an acceptance is
//! remembered; for the exact bytes presented, compared in full (the hash
//! only finds the slot); in the `Bundle` it was verified against (a new
//! bundle starts empty); and it holds only while every certificate presented
//! is within its validity period, checked at each use. What the cache never
//! skips: the caller's proof that it holds the SVID's key (its
//! CertificateVerify, verified by rustls on every handshake), the SPIFFE
//! checks on the leaf and the allow-list (`SpiffeClientVerifier`).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Chains remembered per bundle; the set is emptied when full (a caller
/// cycling through valid SVIDs only causes misses).
const CAPACITY: usize = 1024;
/// A longer chain (all its certificates' DER) is verified every time.
const MAX_CHAIN_BYTES: usize = 16 << 10;

/// Accepted chains by their bytes (length-prefixed DER of the leaf, then of
/// each intermediate as presented), with when they may be reused.
#[derive(Default)]
pub(crate) struct VerifiedChains {
    accepted: Mutex<HashMap<Box<[u8]>, Validity>>,
}

/// Seconds since the epoch: the latest `notBefore` and the earliest
/// `notAfter` of the certificates presented, inclusive (as webpki checks them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Validity {
    not_before: i64,
    not_after: i64,
}

impl Validity {
    /// Every certificate's validity period, intersected; `None` if one does
    /// not parse (that chain is then never remembered).
    fn of(certificates: &[&[u8]]) -> Option<Self> {
        let mut validity = Self { not_before: i64::MIN, not_after: i64::MAX };
        for der in certificates {
            let (_, cert) = X509Certificate::from_der(der).ok()?;
            validity.not_before = validity.not_before.max(cert.validity().not_before.timestamp());
            validity.not_after = validity.not_after.min(cert.validity().not_after.timestamp());
        }
        Some(validity)
    }

    fn contains(&self, now: UnixTime) -> bool {
        let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        self.not_before <= now && now <= self.not_after
    }
}

impl VerifiedChains {
    /// `verifier`'s answer for this chain at `now`, from memory when it
    /// accepted the very same chain before and every certificate in it is
    /// still within its validity period.
    pub(crate) fn verify(
        &self,
        verifier: &dyn ClientCertVerifier,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let certificates: Vec<&[u8]> =
            std::iter::once(end_entity.as_ref()).chain(intermediates.iter().map(AsRef::as_ref)).collect();
        let key = key(&certificates);
        if let Some(key) = &key
            && self.lock().get(key).is_some_and(|validity| validity.contains(now))
        {
            return Ok(());
        }
        verifier.verify_client_cert(end_entity, intermediates, now)?;
        if let Some(key) = key
            && let Some(validity) = Validity::of(&certificates)
        {
            let mut accepted = self.lock();
            if accepted.len() >= CAPACITY {
                accepted.clear();
            }
            accepted.insert(key, validity);
        }
        Ok(())
    }

    /// Chains remembered now.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<[u8]>, Validity>> {
        self.accepted.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Each certificate's length (4 bytes, big-endian) then its DER: no two
/// different chains share a key. `None` when too long to remember.
fn key(certificates: &[&[u8]]) -> Option<Box<[u8]>> {
    let total: usize = certificates.iter().map(|c| 4 + c.len()).sum();
    if total > MAX_CHAIN_BYTES {
        return None;
    }
    let mut key = Vec::with_capacity(total);
    for der in certificates {
        key.extend_from_slice(&u32::try_from(der.len()).ok()?.to_be_bytes());
        key.extend_from_slice(der);
    }
    Some(key.into_boxed_slice())
}

#[cfg(all(test, feature = "dev"))]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use rustls::client::danger::HandshakeSignatureValid;
    use rustls::server::WebPkiClientVerifier;
    use rustls::server::danger::ClientCertVerified;
    use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

    use super::*;
    use crate::TrustDomain;
    use crate::dev::{DevCa, LeafSpec};

    /// A CA's webpki client verifier that counts the chains it is asked about.
    #[derive(Debug)]
    struct Counting {
        inner: Arc<dyn ClientCertVerifier>,
        asked: AtomicUsize,
    }

    impl Counting {
        fn of(ca: &DevCa) -> Self {
            let mut roots = RootCertStore::empty();
            roots.add(ca.bundle_der().clone()).unwrap();
            let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crate::crypto::provider())
                .build()
                .unwrap();
            Self { inner, asked: AtomicUsize::new(0) }
        }

        fn asked(&self) -> usize {
            self.asked.load(Ordering::SeqCst)
        }
    }

    impl ClientCertVerifier for Counting {
        fn root_hint_subjects(&self) -> &[DistinguishedName] {
            self.inner.root_hint_subjects()
        }

        fn verify_client_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            now: UnixTime,
        ) -> Result<ClientCertVerified, rustls::Error> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            self.inner.verify_client_cert(end_entity, intermediates, now)
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    }

    fn ca(td: &str) -> DevCa {
        DevCa::generate(&TrustDomain::new(td).unwrap()).unwrap()
    }

    /// A leaf for `spiffe://a.test/caller` valid from `from` to `until` (seconds since the epoch).
    fn leaf(ca: &DevCa, from: u64, until: u64) -> CertificateDer<'static> {
        let at = |secs| UNIX_EPOCH + Duration::from_secs(secs);
        let spec = LeafSpec {
            uris: vec!["spiffe://a.test/caller".into()],
            not_before: at(from),
            not_after: at(until),
            is_ca: false,
        };
        ca.sign_leaf(&spec).unwrap().0
    }

    fn at(secs: u64) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(secs))
    }

    fn now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    #[test]
    fn an_accepted_chain_is_verified_once_and_reused_only_while_valid() {
        let ca = ca("a.test");
        let verifier = Counting::of(&ca);
        let chains = VerifiedChains::default();
        let t = now();
        let svid = leaf(&ca, t - 60, t + 3600);
        chains.verify(&verifier, &svid, &[], at(t)).unwrap();
        chains.verify(&verifier, &svid, &[], at(t + 10)).unwrap();
        assert_eq!((verifier.asked(), chains.len()), (1, 1), "the second handshake reused the first's answer");
        // Out of its validity period, webpki is asked again and refuses it.
        assert!(chains.verify(&verifier, &svid, &[], at(t + 3601)).is_err(), "expired");
        assert!(chains.verify(&verifier, &svid, &[], at(t - 61)).is_err(), "not yet valid");
        assert_eq!(verifier.asked(), 3);
        // Its last valid second is still valid, as webpki says.
        chains.verify(&verifier, &svid, &[], at(t + 3600)).unwrap();
        assert_eq!(verifier.asked(), 3);
    }

    #[test]
    fn only_the_very_same_accepted_bytes_are_reused() {
        let (ca, other) = (ca("a.test"), ca("a.test"));
        let verifier = Counting::of(&ca);
        let chains = VerifiedChains::default();
        let t = now();
        // Another CA's SVID for the same ID: refused, never remembered.
        let forged = leaf(&other, t - 60, t + 3600);
        for _ in 0..2 {
            assert!(chains.verify(&verifier, &forged, &[], at(t)).is_err());
        }
        assert_eq!((verifier.asked(), chains.len()), (2, 0));
        // Two SVIDs of the same CA and ID: each verified once.
        let (first, second) = (leaf(&ca, t - 60, t + 3600), leaf(&ca, t - 60, t + 3600));
        for svid in [&first, &second, &first, &second] {
            chains.verify(&verifier, svid, &[], at(t)).unwrap();
        }
        assert_eq!((verifier.asked(), chains.len()), (4, 2));
        // The accepted leaf followed by anything else is another chain.
        assert!(chains.verify(&verifier, &first, std::slice::from_ref(&forged), at(t)).is_ok());
        assert_eq!(verifier.asked(), 5);
    }

    #[test]
    fn chains_are_told_apart_by_their_certificates_boundaries() {
        let (a, b) = (&b"\x30\x03abc"[..], &b"\x30\x02de"[..]);
        let joined: Vec<u8> = [a, b].concat();
        assert_ne!(key(&[a, b]), key(&[&joined]));
        assert!(key(&[&vec![0; MAX_CHAIN_BYTES]]).is_none(), "too long to remember");
    }
}
