//! TLS session resumption is off on the mTLS listeners: a resumed TLS 1.3
//! session does not run the client verifier again, so it would skip the
//! current bundle, allow-list and expiry checks.

use std::sync::Arc;

use rustls::HandshakeKind;

use super::support::{TlsServer, allow_all, ca, client, handshake_kind, static_identity};

#[tokio::test]
async fn every_connection_gets_a_full_handshake_and_is_verified_again() {
    let ca = ca("aim.example");
    let server_identity = static_identity(&ca, "spiffe://aim.example/backend", &[]);
    let client = client(static_identity(&ca, "spiffe://aim.example/report", &[]), "spiffe://aim.example/backend");
    let server = TlsServer::start(server_identity.clone(), allow_all()).await;
    for _ in 0..3 {
        assert_eq!(handshake_kind(client.clone(), server.addr).await, HandshakeKind::Full);
    }
    // (The CA's signature on the chain is checked once per bundle: `certs/src/verified.rs`.)
    assert_eq!(server.seen.lock().unwrap().len(), 3, "the verifier judged each connection's caller");

    // A client that keeps sessions resumes against a listener with resumption
    // on: the check above would see it. (The sidecar's `inbound.tls_resumption`
    // is tested through the sidecar: proxy/tests/sidecar/streams.rs.)
    let resumption = certs::tls::Resumption::On { sessions: 16 };
    let config = certs::tls::server_config(server_identity, allow_all(), resumption).unwrap();
    let resuming = TlsServer::start_with(config).await;
    let mut keeping = client.as_ref().clone();
    keeping.resumption = rustls::client::Resumption::in_memory_sessions(16);
    let keeping = Arc::new(keeping);
    assert_eq!(handshake_kind(keeping.clone(), resuming.addr).await, HandshakeKind::Full);
    assert_eq!(handshake_kind(keeping.clone(), resuming.addr).await, HandshakeKind::Resumed);
    // The same client against the default listener (resumption off) never resumes.
    for _ in 0..2 {
        assert_eq!(handshake_kind(keeping.clone(), server.addr).await, HandshakeKind::Full);
    }

    // The sidecar's own outbound client never resumes, even against that peer,
    // so our server verifier runs on every connection.
    for _ in 0..3 {
        assert_eq!(handshake_kind(client.clone(), resuming.addr).await, HandshakeKind::Full);
    }
}
