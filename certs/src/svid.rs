//! X509-SVIDs, trust bundles, and the identity snapshot the TLS glue serves.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};

use crate::crypto::provider;
use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::verified::VerifiedChains;
use crate::x509::{self, LeafInfo, SvidError};

/// Why SVID or bundle material cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MaterialError {
    #[error("SVID has no certificate")]
    EmptyChain,
    #[error("SVID leaf: {0}")]
    Leaf(#[from] SvidError),
    #[error("SVID private key is unusable")]
    BadKey,
    #[error("SVID private key does not match its certificate")]
    KeyMismatch,
    #[error("PEM: {0}")]
    Pem(String),
    #[error("bundle for `{0}` has no usable CA certificate")]
    EmptyBundle(TrustDomain),
    #[error("no bundle for the SVID's own trust domain `{0}`")]
    NoOwnBundle(TrustDomain),
}

/// An X509-SVID: the leaf (first) and intermediates, with its private key.
///
/// `Debug` never prints the key.
#[derive(Clone)]
pub struct Svid {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    leaf: LeafInfo,
}

/// The CA certificates of one trust domain, with a verifier built once and
/// the client chains it has accepted (`crate::verified`).
#[derive(Clone)]
pub struct Bundle {
    authorities: Vec<CertificateDer<'static>>,
    roots: Arc<RootCertStore>,
    client_verifier: Arc<dyn ClientCertVerifier>,
    verified: Arc<VerifiedChains>,
}

/// Bundles by trust domain: the own domain's plus federated ones.
#[derive(Clone, Default)]
pub struct BundleSet {
    bundles: BTreeMap<TrustDomain, Bundle>,
}

/// One consistent identity: the SVID, the bundles it is checked against,
/// and the rustls key built from it once.
pub struct Identity {
    svid: Svid,
    bundles: BundleSet,
    certified_key: Arc<CertifiedKey>,
}

impl Svid {
    /// Builds an SVID from DER: the chain (leaf first) and a PKCS#8 key.
    pub fn from_der(chain: Vec<Vec<u8>>, pkcs8_key: Vec<u8>) -> Result<Self, MaterialError> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8_key));
        Self::new(chain.into_iter().map(CertificateDer::from).collect(), key)
    }

    /// Builds an SVID from PEM text (`svid.pem`, `svid_key.pem`).
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, MaterialError> {
        let chain = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| MaterialError::Pem(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| MaterialError::Pem(e.to_string()))?;
        Self::new(chain, key)
    }

    fn new(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<Self, MaterialError> {
        let leaf_der = chain.first().ok_or(MaterialError::EmptyChain)?;
        let leaf = x509::parse_leaf(leaf_der)?;
        Ok(Self { chain, key: Arc::new(key), leaf })
    }

    pub fn id(&self) -> &SpiffeId {
        &self.leaf.id
    }

    pub fn leaf(&self) -> &LeafInfo {
        &self.leaf
    }

    pub fn not_after(&self) -> SystemTime {
        self.leaf.not_after
    }

    pub fn serial(&self) -> &str {
        &self.leaf.serial
    }

    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The private key, for writing it out (`dev ca issue`). Never log it.
    pub fn private_key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }
}

impl fmt::Debug for Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Svid")
            .field("id", &self.leaf.id)
            .field("serial", &self.leaf.serial)
            .field("not_after", &self.leaf.not_after)
            .field("chain_len", &self.chain.len())
            .field("key", &"...")
            .finish()
    }
}

impl Bundle {
    /// Builds a bundle from CA certificates in DER.
    pub fn from_der(td: &TrustDomain, authorities: Vec<Vec<u8>>) -> Result<Self, MaterialError> {
        let authorities: Vec<CertificateDer<'static>> = authorities.into_iter().map(CertificateDer::from).collect();
        let mut roots = RootCertStore::empty();
        let (added, _ignored) = roots.add_parsable_certificates(authorities.iter().cloned());
        if added == 0 {
            return Err(MaterialError::EmptyBundle(td.clone()));
        }
        let roots = Arc::new(roots);
        // No CRLs (`with_crls`): the accepted chains this bundle remembers
        // (`crate::verified`) assume webpki's answer depends only on the
        // chain, these CAs and the time; revocation would break that.
        let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|_| MaterialError::EmptyBundle(td.clone()))?;
        Ok(Self { authorities, roots, client_verifier, verified: Arc::default() })
    }

    /// Builds a bundle from PEM text (`svid_bundle.pem`).
    pub fn from_pem(td: &TrustDomain, pem: &[u8]) -> Result<Self, MaterialError> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .map(|c| c.map(|c| c.to_vec()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| MaterialError::Pem(e.to_string()))?;
        Self::from_der(td, certs)
    }

    /// Builds a bundle from concatenated DER (the Workload API encoding).
    pub fn from_concatenated_der(td: &TrustDomain, der: &[u8]) -> Result<Self, MaterialError> {
        Self::from_der(td, x509::split_der_certs(der)?)
    }

    pub fn authorities(&self) -> &[CertificateDer<'static>] {
        &self.authorities
    }

    pub fn roots(&self) -> &Arc<RootCertStore> {
        &self.roots
    }

    /// A client's chain (leaf first) checked against these CAs at `now`,
    /// remembered once accepted (see `crate::verified`).
    pub fn verify_client_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        self.verified.verify(end_entity, intermediates, now, || {
            self.client_verifier.verify_client_cert(end_entity, intermediates, now).map(|_| ())
        })
    }
}

impl BundleSet {
    pub fn insert(&mut self, td: TrustDomain, bundle: Bundle) {
        self.bundles.insert(td, bundle);
    }

    pub fn get(&self, td_name: &str) -> Option<&Bundle> {
        self.bundles.get(td_name)
    }

    pub fn trust_domains(&self) -> impl Iterator<Item = &TrustDomain> {
        self.bundles.keys()
    }

    pub fn len(&self) -> usize {
        self.bundles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bundles.is_empty()
    }

    /// The same trust domains with the same CA certificates.
    pub fn same_authorities(&self, other: &BundleSet) -> bool {
        self.bundles.len() == other.bundles.len()
            && self.bundles.iter().zip(&other.bundles).all(|((a, x), (b, y))| a == b && x.authorities == y.authorities)
    }
}

impl fmt::Debug for BundleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.bundles.iter().map(|(td, b)| (td.as_str(), b.authorities.len()))).finish()
    }
}

impl Identity {
    /// Checks that the key matches the leaf and that the own trust domain has a bundle.
    pub fn new(svid: Svid, bundles: BundleSet) -> Result<Self, MaterialError> {
        let own = svid.id().trust_domain();
        if bundles.get(own.as_str()).is_none() {
            return Err(MaterialError::NoOwnBundle(own));
        }
        let signing_key = provider()
            .key_provider
            .load_private_key(svid.key.as_ref().clone_key())
            .map_err(|_| MaterialError::BadKey)?;
        let certified_key = CertifiedKey::new(svid.chain.clone(), signing_key);
        certified_key.keys_match().map_err(|_| MaterialError::KeyMismatch)?;
        Ok(Self { svid, bundles, certified_key: Arc::new(certified_key) })
    }

    pub fn svid(&self) -> &Svid {
        &self.svid
    }

    pub fn bundles(&self) -> &BundleSet {
        &self.bundles
    }

    pub(crate) fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified_key
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity").field("svid", &self.svid).field("bundles", &self.bundles).finish()
    }
}
