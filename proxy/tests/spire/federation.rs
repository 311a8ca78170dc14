//! Two SPIRE servers, two trust domains, bundles exchanged the way an
//! operator does it (`bundle show -format spiffe` / `bundle set`), entries
//! `-federatesWith` the other domain: a caller from the second domain is
//! served; a leaf naming that caller but forged by another CA is refused at
//! the handshake with `untrusted_chain`.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::harness::{Agent, EchoApp, Server, Sidecar, backend_yaml, caller_yaml, http_get, poll};

/// Registers `other`'s trust bundle in `server` (SPIFFE bundle format).
fn trust(server: &Server, other: &Server, dir: &std::path::Path) {
    let path = dir.join(format!("{}-bundle-in-{}.json", other.trust_domain, server.trust_domain));
    std::fs::write(&path, other.bundle("spiffe")).unwrap();
    let id = format!("spiffe://{}", other.trust_domain);
    server.ok(&["bundle", "set", "-format", "spiffe", "-id", &id, "-path", path.to_str().unwrap()]);
}

/// A server certificate verifier that accepts anything: the forger only
/// wants the backend to judge its certificate.
#[derive(Debug)]
struct AcceptAnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[test]
fn a_caller_from_a_federated_domain_is_served_and_a_forged_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (home, away) = (Server::start(dir.path(), "td1.test", "1h"), Server::start(dir.path(), "td2.test", "1h"));
    trust(&home, &away, dir.path());
    trust(&away, &home, dir.path());
    let (home_token, away_token) = (home.join_token("/agent/node1"), away.join_token("/agent/node2"));
    let mut backend = Sidecar::prepare(dir.path(), "backend");
    let mut partner = Sidecar::prepare(dir.path(), "partner");
    home.entry("/agent/node1", "/backend", &backend.binary, &["-federatesWith", "spiffe://td2.test"]);
    away.entry("/agent/node2", "/partner", &partner.binary, &["-federatesWith", "spiffe://td1.test"]);
    let home_agent = Agent::start(dir.path(), &home, &home_token);
    let away_agent = Agent::start(dir.path(), &away, &away_token);

    let app = EchoApp::start();
    let caller_id = away.id("/partner");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "version: '1'
trust_domain: td1.test
default_action: deny
policies:
  - {{name: local, spiffe_id: 'spiffe://td1.test/local', rules: [{{path: '/*', methods: ['*'], action: deny}}]}}
federated_policies:
  - {{spiffe_id: '{caller_id}', trust_domain: td2.test, name: partner, rules: [{{path: '/*', methods: ['*'], action: allow}}]}}
"
        ),
    )
    .unwrap();
    let started = Instant::now();
    backend.start(&backend_yaml(&home_agent.endpoint(), app.addr, &caller_id, &policy));
    partner.start(&caller_yaml(&away_agent.endpoint(), backend.inbound.unwrap(), &home.id("/backend")));
    backend.wait_ready(started);
    partner.wait_ready(started);
    // Served once each side holds the other's bundle (the agents hand them out with the SVIDs).
    let served = poll(Duration::from_secs(60), "the federated caller served", || {
        http_get(partner.outbound.unwrap(), "backend", "/federated").filter(|(status, _)| *status == 200)
    });
    assert_eq!(served.1, caller_id, "the app sees the caller from td2.test");
    eprintln!("federated caller served {:?} after start", started.elapsed());

    // The same ID in a leaf from a CA td1.test has never seen: refused at the handshake.
    let forger = certs::dev::DevCa::generate(&certs::TrustDomain::new("td2.test").unwrap()).unwrap();
    let forged = forger.identity(&caller_id.parse().unwrap(), Duration::from_secs(600), &[]).unwrap();
    let provider = certs::crypto::provider();
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)))
        .with_client_auth_cert(forged.svid().chain().to_vec(), forged.svid().private_key().clone_key())
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("backend").unwrap();
    let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = std::net::TcpStream::connect(backend.inbound.unwrap()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    let _ = tls.write_all(b"GET /forged HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut answer = Vec::new();
    let read = tls.read_to_end(&mut answer);
    assert!(
        read.is_err() || answer.is_empty(),
        "the forged caller got an answer: {}",
        String::from_utf8_lossy(&answer)
    );
    let refused = "a2a_tls_handshakes_total{direction=\"inbound\",result=\"untrusted_chain\"} 1";
    poll(Duration::from_secs(10), refused, || backend.telemetry("/metrics").1.contains(refused).then_some(()));
}
