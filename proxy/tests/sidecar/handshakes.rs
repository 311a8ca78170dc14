//! Refused handshakes in the audit trail: a flood of forged certificates
//! (a fresh self-signed URI SAN per handshake) neither evicts the trail nor
//! makes real agents look like they fail mTLS.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use certs::dev::DevCa;
use certs::{Identity, TrustDomain};
use serde_json::Value;

use super::mesh::{ADMIN_KEY, BACKEND, Mesh, REPORT, TRUST_DOMAIN};
use super::mgmt::call;
use super::support::{eventually, get, http};

/// A client that presents `identity`'s SVID (whatever its CA) and verifies
/// the backend with the mesh's real bundle.
fn presenting(mesh: &Mesh, identity: &Identity) -> Arc<rustls::ClientConfig> {
    let key = identity.svid().private_key().clone_key();
    client(mesh, Some((identity.svid().chain().to_vec(), key)))
}

/// A client verifying the backend with the mesh's real bundle, presenting
/// `cert` (chain and key) as it is, or nothing.
fn client(
    mesh: &Mesh,
    cert: Option<(Vec<rustls::pki_types::CertificateDer<'static>>, rustls::pki_types::PrivateKeyDer<'static>)>,
) -> Arc<rustls::ClientConfig> {
    let verifier = certs::tls::SpiffeServerVerifier::new(mesh.identity(REPORT), BACKEND.parse().unwrap());
    let builder = rustls::ClientConfig::builder_with_provider(certs::crypto::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match cert {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// One handshake from `source` (any 127.x address), its result ignored.
async fn handshake_from(source: IpAddr, server: SocketAddr, config: Arc<rustls::ClientConfig>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let tcp = socket.connect(server).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("budget-backend").unwrap();
    if let Ok(mut tls) = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let _ = tls.read(&mut [0u8; 64]).await;
    }
}

async fn audit(mesh: &Mesh, query: &str) -> Vec<Value> {
    let (status, _, body) =
        call(mesh.backend.mgmt_addr.unwrap(), "GET", &format!("/mgmt/audit?{query}"), Some(ADMIN_KEY), None, &[]).await;
    assert_eq!(status, 200, "{body}");
    body["entries"].as_array().unwrap().clone()
}

async fn handshakes_counted(mesh: &Mesh, result: &str, n: u64) {
    let metric = format!("a2a_tls_handshakes_total{{direction=\"inbound\",result=\"{result}\"}} {n}");
    let counted = || async { get(mesh.backend.telemetry_addr, "/metrics").await.1.contains(&metric).then_some(()) };
    eventually(Duration::from_secs(10), &metric, counted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_forged_certificates_neither_evicts_nor_forges_the_audit_trail() {
    let mesh = Mesh::start().await;
    let reply = http(mesh.report.outbound_addr.unwrap(), "GET", "budget-backend", "/before-the-flood", &[]).await;
    assert_eq!(reply.status, 200, "{reply:?}");

    let forger = DevCa::generate(&TrustDomain::new(TRUST_DOMAIN).unwrap()).unwrap();
    let local = IpAddr::from([127, 0, 0, 1]);
    for i in 0..300 {
        // Half claim a real agent's ID, half a fresh one each time.
        let id = if i % 2 == 0 { REPORT.to_owned() } else { format!("spiffe://{TRUST_DOMAIN}/forged/{i}") };
        let identity = forger.identity(&id.parse().unwrap(), Duration::from_secs(600), &[]).unwrap();
        handshake_from(local, mesh.inbound(), presenting(&mesh, &identity)).await;
    }
    handshakes_counted(&mesh, "untrusted_chain", 300).await;

    let entries = audit(&mesh, "limit=10000").await;
    assert!(entries.iter().any(|e| e["path"] == "/before-the-flood"), "the flood evicted the trail");
    let refusals: Vec<&Value> = entries.iter().filter(|e| e["layer"] == "mtls").collect();
    assert_eq!(refusals.len(), 1, "one event per source and reason in the window: {:?}", refusals.get(..2));
    let event = refusals[0];
    assert_eq!(event["reason"], "untrusted_chain");
    assert_eq!(event["caller_spiffe_id"], Value::Null, "an unverified ID is never the caller: {event}");
    assert!(event["claimed_spiffe_id"].as_str().unwrap().starts_with(&format!("spiffe://{TRUST_DOMAIN}/")), "{event}");
    assert_eq!(event["peer_addr"], "127.0.0.1");
    // Filtering by the real agent's ID finds no refusal made in its name.
    let report = audit(&mesh, &format!("spiffe_id={REPORT}")).await;
    assert!(report.iter().all(|e| e["layer"] != "mtls"), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_from_many_sources_share_one_budget() {
    let mesh = Mesh::start().await;
    let forger = DevCa::generate(&TrustDomain::new(TRUST_DOMAIN).unwrap()).unwrap();
    let configs: Vec<_> = (0..100)
        .map(|i| {
            let id = format!("spiffe://{TRUST_DOMAIN}/forged/{i}").parse().unwrap();
            presenting(&mesh, &forger.identity(&id, Duration::from_secs(600), &[]).unwrap())
        })
        .collect();
    let sources = configs.len() as u64;
    let started = Instant::now();
    for (i, config) in configs.into_iter().enumerate() {
        handshake_from(IpAddr::from([127, 0, 1, i as u8 + 1]), mesh.inbound(), config).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    handshakes_counted(&mesh, "untrusted_chain", sources).await;
    let refusals = audit(&mesh, "limit=10000").await.into_iter().filter(|e| e["layer"] == "mtls").count();
    // A burst of 20, then 5 a second: never one event per source.
    let bound = 20.0 + 5.0 * elapsed + 1.0;
    assert!(refusals >= 1 && (refusals as f64) <= bound, "{refusals} events in {elapsed:.1} s");
    assert!((refusals as u64) < sources, "{refusals}");
}

/// Even a chain that verifies is judged before the peer proves it holds the
/// key (a replayed public SVID of a real agent reaches `not_allowed` too), so
/// a refused handshake never names a caller, only a claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_handshake_never_names_a_caller() {
    let mesh = Mesh::start().await;
    let menus = super::mesh::MENUS;
    let config = mesh.client_tls(menus, &[b"http/1.1"]);
    handshake_from(IpAddr::from([127, 0, 0, 1]), mesh.inbound(), config).await;
    handshakes_counted(&mesh, "not_allowed", 1).await;
    let refusals: Vec<Value> = audit(&mesh, "limit=100").await.into_iter().filter(|e| e["layer"] == "mtls").collect();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(refusals[0]["reason"], "not_allowed");
    assert_eq!(refusals[0]["caller_spiffe_id"], Value::Null);
    assert_eq!(refusals[0]["claimed_spiffe_id"], menus);
    assert!(audit(&mesh, &format!("spiffe_id={menus}")).await.is_empty(), "filed under the agent's name");
}

/// A client presenting `chain` and `key` as they are (no SVID checks on our side).
fn presenting_raw(
    mesh: &Mesh,
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: Vec<u8>,
) -> Arc<rustls::ClientConfig> {
    client(mesh, Some((chain, rustls::pki_types::PrivateKeyDer::Pkcs8(key.into()))))
}

/// Every Layer 1 refusal seen from the real inbound listener: the handshake
/// fails, is counted by its reason and audited (layer `mtls`, no caller, the
/// peer's address), and nothing reaches the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_layer1_refusal_is_counted_and_audited_with_its_reason() {
    let mesh = Mesh::start().await;
    let now = std::time::SystemTime::now();
    let minutes = |m: u64| Duration::from_secs(60 * m);
    let leaf = |uris: &[&str], not_before, not_after| {
        let uris = uris.iter().map(|u| (*u).to_owned()).collect();
        let spec = certs::dev::LeafSpec { uris, not_before, not_after, is_ca: false };
        let (cert, key) = mesh.ca.sign_leaf(&spec).unwrap();
        presenting_raw(&mesh, vec![cert], key)
    };
    let anonymous = client(&mesh, None);
    let forger = DevCa::generate(&TrustDomain::new(TRUST_DOMAIN).unwrap()).unwrap();
    let forged = presenting(&mesh, &forger.identity(&REPORT.parse().unwrap(), minutes(10), &[]).unwrap());
    let cases = [
        ("no_client_cert", anonymous),
        // Signed by the mesh's own CA, so only the SVID rules can refuse them.
        ("bad_svid", leaf(&[REPORT, super::mesh::MENUS], now - minutes(1), now + minutes(10))),
        ("bad_svid", leaf(&[], now - minutes(1), now + minutes(10))),
        ("cert_expired", leaf(&[REPORT], now - minutes(20), now - minutes(10))),
        ("untrusted_chain", forged),
    ];
    let seen_before = mesh.app.seen().len();
    for (i, (reason, config)) in cases.iter().enumerate() {
        let source = IpAddr::from([127, 0, 2, i as u8 + 1]);
        handshake_from(source, mesh.inbound(), config.clone()).await;
        let count = cases[..=i].iter().filter(|(r, _)| r == reason).count() as u64;
        handshakes_counted(&mesh, reason, count).await;
    }
    assert_eq!(mesh.app.seen().len(), seen_before, "nothing reached the app");

    // One event per reason (all of loopback is one source: the second
    // `bad_svid` is folded into the first, and counted above).
    let entries = audit(&mesh, "limit=100").await;
    assert_eq!(entries.len(), 4, "{entries:?}");
    for (i, (reason, _)) in cases.iter().enumerate().filter(|(i, _)| *i != 2) {
        let source = format!("127.0.2.{}", i + 1);
        let event =
            entries.iter().find(|e| e["reason"] == *reason).unwrap_or_else(|| panic!("no {reason} event: {entries:?}"));
        assert_eq!(event["peer_addr"], source.as_str(), "{event}");
        assert_eq!(
            (
                event["direction"].as_str(),
                event["decision"].as_str(),
                event["layer"].as_str(),
                event["reason"].as_str()
            ),
            (Some("inbound"), Some("deny"), Some("mtls"), Some(*reason)),
            "{event}"
        );
        assert_eq!(event["caller_spiffe_id"], Value::Null, "{event}");
    }
}

/// A caller's certificate expiring on an open keep-alive connection: the
/// next request is refused (`cert_expired`) or the connection is closed, and
/// the app never sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_expiring_on_an_open_connection_ends_it() {
    let mesh = Mesh::start().await;
    let now = std::time::SystemTime::now();
    let not_after = now + Duration::from_secs(5);
    let spec = certs::dev::LeafSpec {
        uris: vec![REPORT.to_owned()],
        not_before: now - Duration::from_secs(60),
        not_after,
        is_ca: false,
    };
    let (cert, key) = mesh.ca.sign_leaf(&spec).unwrap();
    let tls = super::support::tls_connect(mesh.inbound(), presenting_raw(&mesh, vec![cert], key)).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.unwrap();
    let conn = tokio::spawn(conn);
    let request = |path: &str| {
        hyper::Request::get(path).header("host", "x").body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap()
    };
    let first = sender.send_request(request("/before-expiry")).await.unwrap();
    assert_eq!(first.status(), 200);
    drop(super::support::read_reply(first).await);

    let expired = || async { (std::time::SystemTime::now() > not_after).then_some(()) };
    eventually(Duration::from_secs(20), "the certificate expired", expired).await;
    let after = match sender.ready().await {
        Err(_) => None,
        Ok(()) => sender.send_request(request("/after-expiry")).await.ok(),
    };
    if let Some(response) = after {
        let reply = super::support::read_reply(response).await;
        assert_eq!((reply.status, reply.denied()), (403, ("mtls".into(), "cert_expired".into())));
    }
    let closed = || async { conn.is_finished().then_some(()) };
    eventually(Duration::from_secs(10), "the connection closed", closed).await;
    let paths = mesh.app.paths();
    assert!(paths.contains(&"/before-expiry".to_owned()) && !paths.contains(&"/after-expiry".to_owned()), "{paths:?}");
}
