//! rustls glue: serve the current SVID, verify peers by SPIFFE ID.
//!
//! The verifiers are written here rather than taken from `spiffe-rustls` so
//! that each rejection carries a Layer 1 `reason` (for the audit event and
//! metrics) and so that a peer is checked against the bundle of its *own*
//! trust domain, which is what makes federation safe.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use rustls::server::NoServerSessionStorage;
use rustls::{CertificateError, ClientConfig, OtherError, ServerConfig};

use crate::crypto::provider;
use crate::pattern::IdPattern;
use crate::rotation::IdentityWatch;
use crate::spiffe_id::SpiffeId;

mod client_verifier;
mod resolver;
mod server_verifier;

pub use client_verifier::SpiffeClientVerifier;
pub use resolver::SvidResolver;
pub use server_verifier::SpiffeServerVerifier;

/// Why a peer's certificate was refused: Layer 1 `reason` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    NotAllowed,
    UntrustedChain,
    NoClientCert,
    BadSvid,
    CertExpired,
}

impl Reason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NotAllowed => "not_allowed",
            Self::UntrustedChain => "untrusted_chain",
            Self::NoClientCert => "no_client_cert",
            Self::BadSvid => "bad_svid",
            Self::CertExpired => "cert_expired",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused peer certificate, carried inside the rustls error so the
/// server can report the reason and (when it parsed) the claimed ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("peer certificate refused: {reason}")]
pub struct PeerRejection {
    pub reason: Reason,
    pub peer: Option<SpiffeId>,
}

/// Decides whether a verified peer ID may connect (the live allow-list).
pub trait PeerAuthorizer: Send + Sync + 'static {
    fn authorize(&self, peer: &SpiffeId) -> bool;
}

impl<F: Fn(&SpiffeId) -> bool + Send + Sync + 'static> PeerAuthorizer for F {
    fn authorize(&self, peer: &SpiffeId) -> bool {
        self(peer)
    }
}

impl PeerAuthorizer for IdPattern {
    fn authorize(&self, peer: &SpiffeId) -> bool {
        self.matches(peer)
    }
}

impl PeerRejection {
    pub(crate) fn new(reason: Reason, peer: Option<SpiffeId>) -> Self {
        Self { reason, peer }
    }
}

impl From<PeerRejection> for rustls::Error {
    fn from(rejection: PeerRejection) -> Self {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(rejection))))
    }
}

/// Finds why a handshake failed, looking through `io::Error` and rustls
/// wrappers. `None` when it was not a certificate decision.
pub fn rejection_of(err: &(dyn StdError + 'static)) -> Option<PeerRejection> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return match tls {
                rustls::Error::NoCertificatesPresented => Some(PeerRejection::new(Reason::NoClientCert, None)),
                rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
                    inner.downcast_ref::<PeerRejection>().cloned()
                }
                _ => None,
            };
        }
        if let Some(rejection) = e.downcast_ref::<PeerRejection>() {
            return Some(rejection.clone());
        }
        current = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
            None => e.source(),
        };
    }
    None
}

/// Maps a webpki verdict on the chain to a Layer 1 reason.
fn chain_reason(err: &rustls::Error) -> Reason {
    match err {
        rustls::Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            Reason::CertExpired
        }
        _ => Reason::UntrustedChain,
    }
}

/// Verifies a peer's certificate chain (leaf first) as the client verifier
/// does at the handshake, against `identity`'s bundles now: for open
/// connections after the bundles changed (a federated bundle removed, a CA
/// rotated out), and so expiry is judged again.
pub fn verify_peer_chain(
    identity: &crate::svid::Identity,
    chain: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<(), Reason> {
    let (leaf_der, intermediates) = chain.split_first().ok_or(Reason::NoClientCert)?;
    let leaf = crate::x509::parse_leaf(leaf_der).map_err(|_| Reason::BadSvid)?;
    let bundle = identity.bundles().get(leaf.id.trust_domain_name()).ok_or(Reason::UntrustedChain)?;
    bundle
        .verify_client_chain(leaf_der, intermediates, rustls::pki_types::UnixTime::now())
        .map_err(|e| chain_reason(&e))
}

/// Whether an mTLS listener lets clients resume sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumption {
    /// Every connection runs the client verifier (the current bundles, the
    /// caller's expiry and SPIFFE ID). The default.
    Off,
    /// Sessions are kept (at most this many) and TLS 1.3 tickets sent. A
    /// resumed session skips the client verifier: whoever turns this on must
    /// judge the session's chain after the handshake
    /// ([`verify_peer_chain`]), as the inbound listener does.
    On { sessions: usize },
}

/// A server config for an mTLS listener: serves the current SVID, requires a
/// client SVID from a trusted domain that `authorizer` accepts.
pub fn server_config(
    identity: IdentityWatch,
    authorizer: Arc<dyn PeerAuthorizer>,
    resumption: Resumption,
) -> Result<ServerConfig, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(Arc::new(SpiffeClientVerifier::new(identity.clone(), authorizer)))
        .with_cert_resolver(Arc::new(SvidResolver::new(identity)));
    match resumption {
        Resumption::Off => {
            config.session_storage = Arc::new(NoServerSessionStorage {});
            config.send_tls13_tickets = 0;
        }
        Resumption::On { sessions } => {
            config.session_storage = rustls::server::ServerSessionMemoryCache::new(sessions);
            config.send_tls13_tickets = 2;
        }
    }
    Ok(config)
}

/// A client config for connecting to a peer sidecar whose SPIFFE ID must
/// match `expected`; presents the current SVID.
///
/// Session resumption is off here too: against a peer that resumes, a
/// resumed session would skip our server verifier (the current bundle, the
/// target's expiry and its SPIFFE ID).
pub fn client_config(identity: IdentityWatch, expected: IdPattern) -> Result<ClientConfig, rustls::Error> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(identity.clone(), expected)))
        .with_client_cert_resolver(Arc::new(SvidResolver::new(identity)));
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}
