//! Peers are checked against the bundle of their own trust domain; malformed
//! SVIDs are refused with the Layer 1 reason the audit event will carry.

use std::time::{Duration, SystemTime};

use certs::SpiffeId;
use certs::dev::LeafSpec;
use certs::tls::Reason;

use super::support::{
    Seen, TlsServer, allow_all, ca, client, client_with_cert, connect, eventually, id, static_identity,
};

async fn last_rejection(server: &TlsServer) -> Option<Reason> {
    let seen: Seen =
        eventually(Duration::from_secs(5), "server records the handshake", || async { server.last() }).await;
    seen.err().flatten().map(|r| r.reason)
}

#[tokio::test]
async fn federated_peer_needs_its_own_domains_bundle() {
    let (a, b) = (ca("a.test"), ca("b.test"));
    let client_b = client(static_identity(&b, "spiffe://b.test/caller", &[&a]), "spiffe://a.test/server");

    // Server federated with b.test: accepted.
    let federated = TlsServer::start(static_identity(&a, "spiffe://a.test/server", &[&b]), allow_all()).await;
    connect(client_b.clone(), federated.addr).await.unwrap();
    assert_eq!(federated.last(), Some(Ok(id("spiffe://b.test/caller"))));

    // Server without b.test's bundle: refused as an untrusted chain.
    let alone = TlsServer::start(static_identity(&a, "spiffe://a.test/server", &[]), allow_all()).await;
    assert!(connect(client_b, alone.addr).await.is_err());
    assert_eq!(last_rejection(&alone).await, Some(Reason::UntrustedChain));
}

#[tokio::test]
async fn leaf_from_another_domains_ca_claiming_this_domain_is_refused() {
    let (a, b) = (ca("a.test"), ca("b.test"));
    // Signed by b.test's CA but claims an a.test ID: a.test's bundle must decide.
    let forged = b.sign_leaf(&LeafSpec::svid(&id("spiffe://a.test/admin"), Duration::from_secs(600))).unwrap();
    let server = TlsServer::start(static_identity(&a, "spiffe://a.test/server", &[&b]), allow_all()).await;
    let c = client_with_cert(static_identity(&a, "spiffe://a.test/x", &[]), "spiffe://a.test/server", Some(forged));
    assert!(connect(c, server.addr).await.is_err());
    assert_eq!(last_rejection(&server).await, Some(Reason::UntrustedChain));
}

#[tokio::test]
async fn malformed_svids_are_refused_with_their_reasons() {
    let a = ca("a.test");
    let now = SystemTime::now();
    let good = LeafSpec::svid(&id("spiffe://a.test/caller"), Duration::from_secs(600));
    let cases = [
        (
            "two URI SANs",
            LeafSpec { uris: vec!["spiffe://a.test/x".into(), "spiffe://a.test/y".into()], ..good.clone() },
            Reason::BadSvid,
        ),
        ("no URI SAN", LeafSpec { uris: vec![], ..good.clone() }, Reason::BadSvid),
        ("non-SPIFFE URI", LeafSpec { uris: vec!["https://a.test/x".into()], ..good.clone() }, Reason::BadSvid),
        ("CA leaf", LeafSpec { is_ca: true, ..good.clone() }, Reason::BadSvid),
        (
            "expired",
            LeafSpec {
                not_before: now - Duration::from_secs(7200),
                not_after: now - Duration::from_secs(3600),
                ..good.clone()
            },
            Reason::CertExpired,
        ),
    ];
    let server = TlsServer::start(static_identity(&a, "spiffe://a.test/server", &[]), allow_all()).await;
    let verify_with = static_identity(&a, "spiffe://a.test/v", &[]);
    for (name, spec, want) in cases {
        let cert = a.sign_leaf(&spec).unwrap();
        let c = client_with_cert(verify_with.clone(), "spiffe://a.test/server", Some(cert));
        server.seen.lock().unwrap().clear();
        assert!(connect(c, server.addr).await.is_err(), "{name} must be refused");
        assert_eq!(last_rejection(&server).await, Some(want), "{name}");
    }
}

#[tokio::test]
async fn no_client_cert_and_not_allowed() {
    let a = ca("a.test");
    let only_report = |peer: &SpiffeId| peer.as_str() == "spiffe://a.test/report";
    let server =
        TlsServer::start(static_identity(&a, "spiffe://a.test/server", &[]), std::sync::Arc::new(only_report)).await;

    let anonymous = client_with_cert(static_identity(&a, "spiffe://a.test/v", &[]), "spiffe://a.test/server", None);
    assert!(connect(anonymous, server.addr).await.is_err());
    assert_eq!(last_rejection(&server).await, Some(Reason::NoClientCert));

    server.seen.lock().unwrap().clear();
    let menus = client(static_identity(&a, "spiffe://a.test/menus", &[]), "spiffe://a.test/server");
    assert!(connect(menus, server.addr).await.is_err());
    assert_eq!(last_rejection(&server).await, Some(Reason::NotAllowed));
    let rejection = server.last().and_then(|s| s.err()).flatten().unwrap();
    assert_eq!(rejection.peer, Some(id("spiffe://a.test/menus")), "the claimed ID is reported");

    let report = client(static_identity(&a, "spiffe://a.test/report", &[]), "spiffe://a.test/server");
    connect(report, server.addr).await.unwrap();
}

#[tokio::test]
async fn client_refuses_a_server_with_the_wrong_spiffe_id() {
    let a = ca("a.test");
    let server = TlsServer::start(static_identity(&a, "spiffe://a.test/impostor", &[]), allow_all()).await;
    let c = client(static_identity(&a, "spiffe://a.test/caller", &[]), "spiffe://a.test/backend");
    let err = connect(c, server.addr).await.unwrap_err();
    let rejection = certs::tls::rejection_of(&err).unwrap();
    assert_eq!(rejection.reason, Reason::NotAllowed);
    assert_eq!(rejection.peer, Some(id("spiffe://a.test/impostor")));

    let pattern_client = client(static_identity(&a, "spiffe://a.test/caller", &[]), "spiffe://a.test/*");
    connect(pattern_client, server.addr).await.unwrap();
}

/// An open connection's chain judged again after our bundles changed: what
/// the handshake verifier would decide now.
#[test]
fn a_peer_chain_is_judged_again_against_the_current_bundles() {
    let (a, b) = (ca("a.test"), ca("b.test"));
    let peer = b.identity(&id("spiffe://b.test/caller"), Duration::from_secs(600), &[]).unwrap();
    let chain = peer.svid().chain().to_vec();
    let federated = a.identity(&id("spiffe://a.test/server"), Duration::from_secs(600), &[&b]).unwrap();
    assert_eq!(certs::tls::verify_peer_chain(&federated, &chain), Ok(()));
    let alone = a.identity(&id("spiffe://a.test/server"), Duration::from_secs(600), &[]).unwrap();
    assert_eq!(certs::tls::verify_peer_chain(&alone, &chain), Err(Reason::UntrustedChain), "bundle removed");
    // A rotated-out CA: b.test's bundle now holds another CA.
    let b2 = ca("b.test");
    let rotated = a.identity(&id("spiffe://a.test/server"), Duration::from_secs(600), &[&b2]).unwrap();
    assert_eq!(certs::tls::verify_peer_chain(&rotated, &chain), Err(Reason::UntrustedChain));
    assert_eq!(certs::tls::verify_peer_chain(&federated, &[]), Err(Reason::NoClientCert));
}
