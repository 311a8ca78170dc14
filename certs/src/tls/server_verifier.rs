//! Outbound: verifies the target sidecar by SPIFFE ID instead of a DNS name.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::{PeerRejection, Reason, chain_reason, provider};
use crate::pattern::IdPattern;
use crate::rotation::IdentityWatch;
use crate::x509;

#[derive(Debug)]
pub struct SpiffeServerVerifier {
    identity: IdentityWatch,
    expected: IdPattern,
}

impl SpiffeServerVerifier {
    pub fn new(identity: IdentityWatch, expected: IdPattern) -> Self {
        Self { identity, expected }
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
        let bundle =
            identity.bundles().get(leaf.id.trust_domain_name()).ok_or_else(|| reject(Reason::UntrustedChain))?;
        let parsed = ParsedCertificate::try_from(end_entity).map_err(|_| reject(Reason::BadSvid))?;
        let algs = provider().signature_verification_algorithms.all;
        verify_server_cert_signed_by_trust_anchor(&parsed, bundle.roots(), intermediates, now, algs)
            .map_err(|e| reject(chain_reason(&e)))?;
        if !self.expected.matches(&leaf.id) {
            return Err(reject(Reason::NotAllowed));
        }
        Ok(())
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now)?;
        Ok(ServerCertVerified::assertion())
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
