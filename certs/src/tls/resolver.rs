//! Serves the current SVID on both sides of a handshake.

use std::sync::Arc;

use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::rotation::IdentityWatch;

/// Always the SVID current at handshake time: a rotation needs no restart.
/// With no SVID yet it returns nothing and the handshake fails closed.
#[derive(Debug, Clone)]
pub struct SvidResolver {
    identity: IdentityWatch,
}

impl SvidResolver {
    pub fn new(identity: IdentityWatch) -> Self {
        Self { identity }
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.identity.current().map(|id| id.certified_key().clone())
    }
}

impl ResolvesServerCert for SvidResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for SvidResolver {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        true
    }
}
