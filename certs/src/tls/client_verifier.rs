//! Inbound: verifies a client SVID against its own trust domain's bundle,
//! then asks the allow-list (Layer 1 at the handshake).

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::{PeerAuthorizer, PeerRejection, Reason, chain_reason, provider};
use crate::rotation::IdentityWatch;
use crate::x509;

pub struct SpiffeClientVerifier {
    identity: IdentityWatch,
    authorizer: Arc<dyn PeerAuthorizer>,
}

impl SpiffeClientVerifier {
    pub fn new(identity: IdentityWatch, authorizer: Arc<dyn PeerAuthorizer>) -> Self {
        Self { identity, authorizer }
    }

    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), PeerRejection> {
        let leaf = x509::parse_leaf(end_entity).map_err(|_| PeerRejection::new(Reason::BadSvid, None))?;
        let reject = |reason| PeerRejection::new(reason, Some(leaf.id.clone()));
        let identity = self.identity.current().ok_or_else(|| reject(Reason::UntrustedChain))?;
        // The peer's own trust domain decides which CAs may vouch for it: a leaf
        // signed by another domain's CA that claims this domain fails here.
        let bundle =
            identity.bundles().get(leaf.id.trust_domain_name()).ok_or_else(|| reject(Reason::UntrustedChain))?;
        bundle.verify_client_chain(end_entity, intermediates, now).map_err(|e| reject(chain_reason(&e)))?;
        if !self.authorizer.authorize(&leaf.id) {
            return Err(reject(Reason::NotAllowed));
        }
        Ok(())
    }
}

impl fmt::Debug for SpiffeClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeClientVerifier").finish_non_exhaustive()
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // SPIFFE peers hold one SVID; CA hints would only leak the bundle.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &provider().signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &provider().signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider().signature_verification_algorithms.supported_schemes()
    }
}
