//! A TLS server built from `certs` keeps serving while its SVID rotates, and
//! keeps its still-valid SVID while the Workload API is gone.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use certs::dev::{WorkloadApiServer, WorkloadApiServerConfig};
use certs::source::{self, Backoff, WorkloadApiSource};

use super::support::{TlsServer, allow_all, ca, client, connect, eventually, id, static_identity};

fn config(ca: Arc<certs::dev::DevCa>, ttl: Duration) -> WorkloadApiServerConfig {
    WorkloadApiServerConfig { ca, id: id("spiffe://a.test/server"), ttl, federated: vec![] }
}

fn fast_source(endpoint: String) -> Box<WorkloadApiSource> {
    Box::new(
        WorkloadApiSource::new(Some(endpoint))
            .with_backoff(Backoff::new(Duration::from_millis(20), Duration::from_millis(200))),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_across_three_rotations_without_a_failed_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("a.test");
    // A 2 s SVID is replaced every second.
    let agent = WorkloadApiServer::start(&dir.path().join("agent.sock"), config(ca.clone(), Duration::from_secs(2)))
        .await
        .unwrap();
    let (mut server_identity, _task) = source::spawn(fast_source(agent.endpoint()));
    tokio::time::timeout(Duration::from_secs(10), server_identity.wait_ready()).await.unwrap();
    let server = TlsServer::start(server_identity, allow_all()).await;
    let client = client(static_identity(&ca, "spiffe://a.test/client", &[]), "spiffe://a.test/server");

    let mut serials = BTreeSet::new();
    let mut handshakes = 0u32;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while serials.len() < 4 {
        assert!(tokio::time::Instant::now() < deadline, "only saw {} serials", serials.len());
        let serial = connect(client.clone(), server.addr).await;
        handshakes += 1;
        // Every single handshake must succeed, before, during and after each rotation.
        let serial = serial.unwrap_or_else(|e| panic!("handshake {handshakes} failed: {e}"));
        serials.insert(serial);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(handshakes > 8, "the client connected repeatedly ({handshakes} handshakes)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_the_valid_svid_while_the_agent_is_down_then_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let ca = ca("a.test");
    let agent = WorkloadApiServer::start(&socket, config(ca.clone(), Duration::from_secs(60))).await.unwrap();
    let (identity, _task) = source::spawn(fast_source(agent.endpoint()));
    let server = TlsServer::start(identity.clone(), allow_all()).await;
    let client = client(static_identity(&ca, "spiffe://a.test/client", &[]), "spiffe://a.test/server");

    let first = eventually(Duration::from_secs(10), "first svid", || {
        let c = client.clone();
        async move { connect(c, server.addr).await.ok() }
    })
    .await;

    agent.stop().await;
    let status = eventually(Duration::from_secs(10), "source notices the agent is gone", || {
        let i = identity.clone();
        async move { Some(i.status()).filter(|s| !s.connected) }
    })
    .await;
    assert!(status.last_error.is_some());
    // Still serving the same, still-valid SVID.
    assert_eq!(connect(client.clone(), server.addr).await.unwrap(), first);
    assert!(identity.is_ready());

    let agent = WorkloadApiServer::start(&socket, config(ca.clone(), Duration::from_secs(60))).await.unwrap();
    let next = eventually(Duration::from_secs(10), "reconnect and a new svid", || {
        let c = client.clone();
        let first = first.clone();
        async move { connect(c, server.addr).await.ok().filter(|s| *s != first) }
    })
    .await;
    assert_eq!(Some(next), agent.current_serial());
    assert!(identity.status().connected);
}

#[tokio::test]
async fn no_svid_yet_means_every_handshake_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("a.test");
    // Nothing listens on this socket.
    let (identity, _task) = source::spawn(fast_source(format!("unix://{}", dir.path().join("none.sock").display())));
    let server = TlsServer::start(identity.clone(), allow_all()).await;
    let client = client(static_identity(&ca, "spiffe://a.test/client", &[]), "spiffe://a.test/server");
    let err = connect(client, server.addr).await.expect_err("a server with no SVID completed a handshake");
    // Refused by the server for want of a certificate to present (rustls's
    // resolver found none: `access_denied`), not by the client's checks of one.
    let tls_error = err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
    assert_eq!(tls_error, Some(&rustls::Error::AlertReceived(rustls::AlertDescription::AccessDenied)), "{err:?}");
    // The server saw the handshake fail, and not over a peer certificate.
    let seen = eventually(Duration::from_secs(10), "the server records the failed handshake", || {
        let last = server.last();
        async move { last }
    })
    .await;
    assert_eq!(seen, Err(None));
    assert!(!identity.is_ready());
    assert!(matches!(identity.state(), certs::IdentityState::Initializing));
}

#[tokio::test(start_paused = true)]
async fn an_expired_svid_without_replacement_makes_the_identity_unavailable() {
    let ca = ca("a.test");
    let (publisher, watch) = certs::rotation::channel();
    let watchdog = tokio::spawn(certs::rotation::IdentityPublisher::expire_stale(publisher.state_sender()));
    publisher.publish(ca.identity(&id("spiffe://a.test/x"), Duration::from_secs(5), &[]).unwrap());
    assert!(watch.is_ready());
    // The watchdog sleeps on the tokio clock until not_after (the wall clock is
    // not paused, so give it the SVID's lifetime plus a margin).
    let mut w = watch.clone();
    tokio::time::timeout(Duration::from_secs(3600), async {
        while !matches!(w.state(), certs::IdentityState::Unavailable(_)) {
            w.changed().await;
        }
    })
    .await
    .unwrap();
    assert!(watch.current().is_none());
    watchdog.abort();
}
