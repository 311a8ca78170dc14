//! Shared helpers: CAs, static identities, a TLS echo server that records
//! why it refused each handshake, and polling with a deadline.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use certs::dev::DevCa;
use certs::tls::{self, PeerAuthorizer, PeerRejection};
use certs::{IdPattern, IdentityWatch, SpiffeId, TrustDomain};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

pub fn ca(td: &str) -> Arc<DevCa> {
    Arc::new(DevCa::generate(&TrustDomain::new(td).unwrap()).unwrap())
}

pub fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

pub fn pattern(s: &str) -> IdPattern {
    s.parse().unwrap()
}

/// An identity that never rotates, trusting `ca` and `federated`.
pub fn static_identity(ca: &DevCa, spiffe_id: &str, federated: &[&DevCa]) -> IdentityWatch {
    IdentityWatch::fixed(Arc::new(ca.identity(&id(spiffe_id), Duration::from_secs(3600), federated).unwrap()))
}

/// Outcome of one handshake as the server saw it.
pub type Seen = Result<SpiffeId, Option<PeerRejection>>;

/// A TLS server on 127.0.0.1:0 that writes `ok` after each handshake.
pub struct TlsServer {
    pub addr: std::net::SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsServer {
    pub async fn start(identity: IdentityWatch, authorizer: Arc<dyn PeerAuthorizer>) -> Self {
        Self::start_with(tls::server_config(identity, authorizer, tls::Resumption::Off).unwrap()).await
    }

    pub async fn start_with(config: rustls::ServerConfig) -> Self {
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (acceptor, record) = (acceptor.clone(), record.clone());
                tokio::spawn(async move {
                    match acceptor.accept(tcp).await {
                        Ok(mut stream) => {
                            let peer = stream.get_ref().1.peer_certificates().and_then(|c| c.first().cloned());
                            let peer_id = peer.map(|c| certs::x509::parse_leaf(&c).unwrap().id);
                            record.lock().unwrap().push(Ok(peer_id.unwrap()));
                            let _ = stream.write_all(b"ok").await;
                            let _ = stream.shutdown().await;
                        }
                        Err(e) => record.lock().unwrap().push(Err(tls::rejection_of(&e))),
                    }
                });
            }
        });
        Self { addr, seen, task }
    }

    pub fn last(&self) -> Option<Seen> {
        self.seen.lock().unwrap().last().cloned()
    }
}

/// Connects, completes the handshake, reads `ok`; returns the server leaf's serial.
pub async fn connect(config: Arc<rustls::ClientConfig>, addr: std::net::SocketAddr) -> std::io::Result<String> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("sidecar.invalid").unwrap();
    let mut stream = TlsConnector::from(config).connect(name, tcp).await?;
    let mut buf = [0u8; 2];
    stream.read_exact(&mut buf).await?;
    let leaf = stream.get_ref().1.peer_certificates().and_then(|c| c.first().cloned()).unwrap();
    Ok(certs::x509::parse_leaf(&leaf).unwrap().serial)
}

/// Connects, reads `ok`, and says whether the handshake was full or resumed.
pub async fn handshake_kind(config: Arc<rustls::ClientConfig>, addr: std::net::SocketAddr) -> rustls::HandshakeKind {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("sidecar.invalid").unwrap();
    let mut stream = TlsConnector::from(config).connect(name, tcp).await.unwrap();
    let mut buf = [0u8; 2];
    stream.read_exact(&mut buf).await.unwrap();
    stream.get_ref().1.handshake_kind().unwrap()
}

pub fn client(identity: IdentityWatch, expected: &str) -> Arc<rustls::ClientConfig> {
    Arc::new(tls::client_config(identity, pattern(expected)).unwrap())
}

/// A client that presents exactly `chain`/`key` (possibly invalid SVIDs)
/// and verifies the server with `identity`'s bundles.
pub fn client_with_cert(
    identity: IdentityWatch,
    expected: &str,
    cert: Option<(CertificateDer<'static>, Vec<u8>)>,
) -> Arc<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(certs::crypto::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(tls::SpiffeServerVerifier::new(identity, pattern(expected))));
    Arc::new(match cert {
        Some((cert, key)) => {
            builder.with_client_auth_cert(vec![cert], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key))).unwrap()
        }
        None => builder.with_no_client_auth(),
    })
}

pub fn allow_all() -> Arc<dyn PeerAuthorizer> {
    Arc::new(|_: &SpiffeId| true)
}

pub use certs::dev::eventually;
