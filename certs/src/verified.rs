//! Client chains a bundle's verifier has accepted, so a caller that opens
//! another connection with the same SVID is not verified against its CA
//! again: of the three ECDSA verifications in a full mTLS handshake (the
//! CA's signature on the caller's SVID, the caller's CertificateVerify, and
//! our own signature), that one is about a fifth of the handshake's
//! instructions (bench/README.md).
//!
//! The answer is the one webpki would give again: it depends only on the
//! chain's bytes, the bundle's CAs and the time (no CRLs: see
//! `Bundle::from_der`). So only an acceptance is remembered; by the SHA-256
//! of the exact chain presented; in the `Bundle` it was verified against (a
//! new bundle starts empty); and it holds only while every certificate
//! presented is within its validity period, checked at each use. What the
//! cache never skips: the caller's proof that it holds the SVID's key (its
//! CertificateVerify, verified by rustls on every handshake), the SPIFFE
//! checks on the leaf and the allow-list (`SpiffeClientVerifier`).
//!
//! The chain is verified (and remembered) when it arrives, before the
//! caller has proved it holds the key, so anyone with a valid SVID's
//! certificate can add entries: each is a digest and two times, and the set
//! is bounded. A caller that keeps reconnecting through a flood of one-time
//! chains stays remembered (moka admits a newcomer only in place of an
//! entry seen less often); one that stays away through more distinct chains
//! than the cache holds may be pushed out, and is then verified in full
//! again: a miss, never another answer. A hit also answers sooner than a
//! miss, which tells a prober holding a caller's certificate that the chain
//! was seen under the current bundle: nothing it could not learn otherwise.

use aws_lc_rs::digest::{Context, SHA256};
use rustls::pki_types::{CertificateDer, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Chains remembered per bundle.
const CAPACITY: u64 = 1024;
/// A chain of more certificates (the leaf included), or of more bytes, is
/// verified every time: an SVID's chain is its leaf and a few intermediates.
const MAX_CERTIFICATES: usize = 4;
const MAX_CHAIN_BYTES: usize = 16 << 10;

/// Accepted chains by the SHA-256 of their length-prefixed DER (the leaf,
/// then each intermediate as presented), with when they may be reused.
pub(crate) struct VerifiedChains {
    accepted: moka::sync::Cache<[u8; 32], Validity>,
}

impl Default for VerifiedChains {
    fn default() -> Self {
        Self { accepted: moka::sync::Cache::new(CAPACITY) }
    }
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
    /// The answer of `verify` (the bundle's verifier, judging this very
    /// chain at `now`), from memory when it accepted the same chain before
    /// and every certificate in it is still within its validity period.
    pub(crate) fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        verify: impl FnOnce() -> Result<(), rustls::Error>,
    ) -> Result<(), rustls::Error> {
        let certificates: Vec<&[u8]> =
            std::iter::once(end_entity.as_ref()).chain(intermediates.iter().map(AsRef::as_ref)).collect();
        let key = key(&certificates);
        if let Some(key) = &key
            && self.accepted.get(key).is_some_and(|validity| validity.contains(now))
        {
            return Ok(());
        }
        verify()?;
        if let Some(key) = key
            && let Some(validity) = Validity::of(&certificates)
        {
            self.accepted.insert(key, validity);
        }
        Ok(())
    }

    /// Chains remembered now (after pending evictions).
    #[cfg(test)]
    fn len(&self) -> u64 {
        self.accepted.run_pending_tasks();
        self.accepted.entry_count()
    }
}

/// The SHA-256 of each certificate's length (4 bytes, big-endian) then its
/// DER: no two chains share a key. `None` when too long to remember.
fn key(certificates: &[&[u8]]) -> Option<[u8; 32]> {
    let total: usize = certificates.iter().map(|c| 4 + c.len()).sum();
    if certificates.len() > MAX_CERTIFICATES || total > MAX_CHAIN_BYTES {
        return None;
    }
    let mut digest = Context::new(&SHA256);
    for der in certificates {
        digest.update(&u32::try_from(der.len()).ok()?.to_be_bytes());
        digest.update(der);
    }
    digest.finish().as_ref().try_into().ok()
}

#[cfg(all(test, feature = "dev"))]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use rustls::RootCertStore;
    use rustls::server::WebPkiClientVerifier;
    use rustls::server::danger::ClientCertVerifier;

    use rcgen::{BasicConstraints, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};

    use super::*;

    /// A CA's webpki client verifier that counts the chains it is asked about.
    struct Counting {
        inner: Arc<dyn ClientCertVerifier>,
        asked: AtomicUsize,
    }

    impl Counting {
        fn anchored(root: CertificateDer<'static>) -> Self {
            let mut roots = RootCertStore::empty();
            roots.add(root).unwrap();
            let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crate::crypto::provider())
                .build()
                .unwrap();
            Self { inner, asked: AtomicUsize::new(0) }
        }

        fn asked(&self) -> usize {
            self.asked.load(Ordering::SeqCst)
        }

        /// `chains`' answer for this chain, asking this verifier on a miss
        /// (as `Bundle::verify_client_chain` asks the bundle's).
        fn through(
            &self,
            chains: &VerifiedChains,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            now: UnixTime,
        ) -> Result<(), rustls::Error> {
            chains.verify(end_entity, intermediates, now, || {
                self.asked.fetch_add(1, Ordering::SeqCst);
                self.inner.verify_client_cert(end_entity, intermediates, now).map(|_| ())
            })
        }
    }

    /// A certificate valid from `from` to `until` (seconds since the epoch): a
    /// CA, or an SVID for `spiffe://a.test/caller`.
    fn params(from: u64, until: u64, ca: bool) -> rcgen::CertificateParams {
        let time = |secs| (UNIX_EPOCH + Duration::from_secs(secs)).into();
        let mut params = rcgen::CertificateParams::default();
        (params.not_before, params.not_after) = (time(from), time(until));
        if ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        } else {
            params.subject_alt_names = vec![SanType::URI("spiffe://a.test/caller".try_into().unwrap())];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        params
    }

    /// A root CA valid for a day around now.
    fn root() -> (CertificateDer<'static>, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let t = now();
        let cert = params(t - 86_400, t + 86_400, true).self_signed(&key).unwrap();
        (cert.der().clone(), key)
    }

    /// An SVID signed by `ca`, valid from `from` to `until`.
    fn leaf(ca: &(CertificateDer<'static>, KeyPair), from: u64, until: u64) -> CertificateDer<'static> {
        let issuer = Issuer::from_ca_cert_der(&ca.0, &ca.1).unwrap();
        params(from, until, false).signed_by(&KeyPair::generate().unwrap(), &issuer).unwrap().der().clone()
    }

    fn at(secs: u64) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(secs))
    }

    fn now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    #[test]
    fn an_accepted_chain_is_verified_once_and_reused_only_while_valid() {
        let ca = root();
        let verifier = Counting::anchored(ca.0.clone());
        let chains = VerifiedChains::default();
        let t = now();
        let svid = leaf(&ca, t - 60, t + 3600);
        verifier.through(&chains, &svid, &[], at(t)).unwrap();
        verifier.through(&chains, &svid, &[], at(t + 10)).unwrap();
        assert_eq!((verifier.asked(), chains.len()), (1, 1), "the second handshake reused the first's answer");
        // Out of its validity period, webpki is asked again and refuses it.
        assert!(verifier.through(&chains, &svid, &[], at(t + 3601)).is_err(), "expired");
        assert!(verifier.through(&chains, &svid, &[], at(t - 61)).is_err(), "not yet valid");
        assert_eq!(verifier.asked(), 3);
        // Its last valid second is still valid, as webpki says.
        verifier.through(&chains, &svid, &[], at(t + 3600)).unwrap();
        assert_eq!(verifier.asked(), 3);
    }

    #[test]
    fn only_the_very_same_accepted_bytes_are_reused() {
        let (ca, other) = (root(), root());
        let verifier = Counting::anchored(ca.0.clone());
        let chains = VerifiedChains::default();
        let t = now();
        // Another CA's SVID for the same ID: refused, never remembered.
        let forged = leaf(&other, t - 60, t + 3600);
        for _ in 0..2 {
            assert!(verifier.through(&chains, &forged, &[], at(t)).is_err());
        }
        assert_eq!((verifier.asked(), chains.len()), (2, 0));
        // Two SVIDs of the same CA and ID: each verified once.
        let (first, second) = (leaf(&ca, t - 60, t + 3600), leaf(&ca, t - 60, t + 3600));
        for svid in [&first, &second, &first, &second] {
            verifier.through(&chains, svid, &[], at(t)).unwrap();
        }
        assert_eq!((verifier.asked(), chains.len()), (4, 2));
        // The accepted leaf followed by anything else is another chain.
        assert!(verifier.through(&chains, &first, std::slice::from_ref(&forged), at(t)).is_ok());
        assert_eq!(verifier.asked(), 5);
    }

    /// A root, an intermediate under it, and an SVID under that: each valid
    /// from `from`, the intermediate until `intermediate_until`, the others an hour more.
    fn two_levels(from: u64, intermediate_until: u64) -> [CertificateDer<'static>; 3] {
        let (root_key, int_key, leaf_key) =
            (KeyPair::generate().unwrap(), KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
        let root = params(from, intermediate_until + 3600, true).self_signed(&root_key).unwrap();
        let root_issuer = Issuer::from_ca_cert_der(root.der(), &root_key).unwrap();
        let intermediate = params(from, intermediate_until, true).signed_by(&int_key, &root_issuer).unwrap();
        let int_issuer = Issuer::from_ca_cert_der(intermediate.der(), &int_key).unwrap();
        let leaf = params(from, intermediate_until + 3600, false).signed_by(&leaf_key, &int_issuer).unwrap();
        [root.der().clone(), intermediate.der().clone(), leaf.der().clone()]
    }

    /// Reuse ends when the first certificate of the chain expires, here an
    /// intermediate; both ends of the period are inclusive, as in webpki.
    #[test]
    fn an_intermediate_that_expires_first_ends_the_reuse() {
        let t = now();
        let [root, intermediate, leaf] = two_levels(t - 60, t + 100);
        let verifier = Counting::anchored(root);
        let chains = VerifiedChains::default();
        let through = std::slice::from_ref(&intermediate);
        verifier.through(&chains, &leaf, through, at(t)).unwrap();
        verifier.through(&chains, &leaf, through, at(t + 100)).unwrap();
        verifier.through(&chains, &leaf, through, at(t - 60)).unwrap();
        assert_eq!(verifier.asked(), 1, "reused from its first to its last valid second");
        assert!(verifier.through(&chains, &leaf, through, at(t + 101)).is_err(), "the intermediate expired");
        assert_eq!(verifier.asked(), 2);
    }

    /// Anyone holding valid certificates can offer chains the cache has
    /// never seen (it remembers a chain before the caller proves its key):
    /// a flood of one-time chains, twice what it holds, stays bounded, and
    /// a caller that reconnects during it (every 100 of them) stays
    /// remembered: once the cache is full, moka admits a newcomer only in
    /// place of an entry seen less often, and a one-time chain never is.
    #[test]
    fn a_flood_of_one_time_chains_does_not_push_out_a_returning_caller() {
        let ca = root();
        let verifier = Counting::anchored(ca.0.clone());
        let chains = VerifiedChains::default();
        let t = now();
        let returning = leaf(&ca, t - 60, t + 3600);
        verifier.through(&chains, &returning, &[], at(t)).unwrap();
        // One key for the flood's leaves: each differs by its validity.
        let issuer = Issuer::from_ca_cert_der(&ca.0, &ca.1).unwrap();
        let key = KeyPair::generate().unwrap();
        let flood = 2 * CAPACITY;
        for n in 0..flood {
            let one_time = params(t - 60 - n, t + 3600, false).signed_by(&key, &issuer).unwrap();
            verifier.through(&chains, one_time.der(), &[], at(t)).unwrap();
            if n % 100 == 99 {
                verifier.through(&chains, &returning, &[], at(t)).unwrap();
            }
        }
        assert!(chains.len() <= CAPACITY, "bounded: {}", chains.len());
        assert_eq!(verifier.asked(), 1 + flood as usize, "the returning caller's chain was verified once");
        verifier.through(&chains, &returning, &[], at(t)).unwrap();
        assert_eq!(verifier.asked(), 1 + flood as usize, "and is still remembered");
    }

    #[test]
    fn chains_are_told_apart_by_their_certificates_boundaries() {
        let (a, b) = (&b"\x30\x03abc"[..], &b"\x30\x02de"[..]);
        let joined: Vec<u8> = [a, b].concat();
        assert_ne!(key(&[a, b]), key(&[&joined]));
        assert!(key(&[&vec![0; MAX_CHAIN_BYTES]]).is_none(), "too long to remember");
        assert!(key(&[a; MAX_CERTIFICATES]).is_some());
        assert!(key(&[a; MAX_CERTIFICATES + 1]).is_none(), "too many certificates to remember");
    }
}
