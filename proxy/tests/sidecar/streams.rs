//! Long-lived streams do not escape later decisions: a risk push, a policy
//! change, a removed federated bundle or the caller certificate's expiry
//! close what is already open (an SSE response, an upgraded tunnel, a
//! connection), not only the next request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use certs::dev::DevCa;
use certs::{IdentityWatch, TrustDomain};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::AsyncReadExt;

use super::dataplane::{open_sse, open_upgrade};
use super::mesh::{ADMIN_KEY, BACKEND, Mesh, OPEN_POLICY, REPORT};
use super::mgmt::call;
use super::support::{eventually, tls_connect};

/// The stream ends (error or end) within the deadline, with nothing more from the app.
async fn cut(body: &mut hyper::body::Incoming) {
    let next = tokio::time::timeout(Duration::from_secs(10), body.frame()).await.expect("the stream is still open");
    assert!(!matches!(next, Some(Ok(_))), "the stream went on: {next:?}");
}

const PARTNER_ID: &str = "spiffe://partner.example/agent";

/// Federates a fresh `partner.example` into the first agent's bundles and
/// returns the partner's identity (which trusts our CA too, so it accepts
/// the backend) and sidecar `name`'s YAML with the partner allowed.
fn federate_partner(mesh: &Mesh, name: &str) -> (Arc<certs::Identity>, String) {
    let partner = DevCa::generate(&TrustDomain::new("partner.example").unwrap()).unwrap();
    let agent = &mesh.agents[0];
    agent.set_federated_raw("spiffe://partner.example", Some(partner.bundle_der().to_vec()));
    agent.rotate_now();
    let yaml = mesh
        .sidecar_yaml(name, mesh.app.addr)
        .replace(&format!("allowed_callers: ['{REPORT}'"), &format!("allowed_callers: ['{PARTNER_ID}', '{REPORT}'"));
    assert!(yaml.contains(PARTNER_ID));
    let identity = partner.identity(&PARTNER_ID.parse().unwrap(), Duration::from_secs(600), &[&mesh.ca]).unwrap();
    (Arc::new(identity), yaml)
}

async fn audit_cut(mesh: &Mesh, reason: &str) -> Value {
    let mgmt = mesh.backend.mgmt_addr.unwrap();
    let found = || async {
        let (_, _, body) = call(mgmt, "GET", "/mgmt/audit?decision=deny", Some(ADMIN_KEY), None, &[]).await;
        body["entries"].as_array()?.iter().find(|e| e["reason"] == reason && e["actor"] == "stream re-check").cloned()
    };
    eventually(Duration::from_secs(10), "an audit event for the cut stream", found).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_risk_push_cuts_an_open_stream() {
    let mesh = Mesh::start().await;
    let mut body = open_sse(mesh.report.outbound_addr.unwrap()).await;
    let push = format!(r#"{{"spiffe_id": "{REPORT}", "risk_level": "high"}}"#);
    let mgmt = mesh.backend.mgmt_addr.unwrap();
    assert_eq!(call(mgmt, "PUT", "/mgmt/agent-risk", Some(ADMIN_KEY), Some(&push), &[]).await.0, 200);
    cut(&mut body).await;
    let event = audit_cut(&mesh, "high_risk_agent_blocked").await;
    assert_eq!((event["path"].as_str(), event["caller_spiffe_id"].as_str()), (Some("/sse"), Some(REPORT)));
    mesh.app.release_sse.notify_one();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_cuts_an_open_tunnel_but_not_what_it_still_allows() {
    let mesh = Mesh::start().await;
    let mut ws = open_upgrade(mesh.report.outbound_addr.unwrap()).await;
    let mut sse = open_sse(mesh.report.outbound_addr.unwrap()).await;
    // The new policy keeps /sse for budget-report, and nothing else.
    let policy = OPEN_POLICY.replace(
        "{name: budget-report, spiffe_id: 'spiffe://aim.microsoft.com/ests/bp/b1/aid/budget-report', rules: [{path: '/*', methods: ['*'], action: allow}]}",
        "{name: budget-report, spiffe_id: 'spiffe://aim.microsoft.com/ests/bp/b1/aid/budget-report', rules: [{path: '/sse', methods: ['GET'], action: allow}]}",
    );
    assert_ne!(policy, OPEN_POLICY);
    let mgmt = mesh.backend.mgmt_addr.unwrap();
    assert_eq!(call(mgmt, "PUT", "/mgmt/policy", Some(ADMIN_KEY), Some(&policy), &[]).await.0, 200);

    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), ws.read(&mut buf)).await.expect("tunnel still open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    audit_cut(&mesh, "no_matching_rule").await;
    // The SSE stream is still allowed: it goes on.
    mesh.app.release_sse.notify_one();
    let next = tokio::time::timeout(Duration::from_secs(10), sse.frame()).await.unwrap().unwrap().unwrap();
    assert_eq!(next.into_data().unwrap(), "data: second\n\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_federated_bundle_closes_its_callers_connections() {
    let mesh = Mesh::start().await;
    let (identity, yaml) = federate_partner(&mesh, "federated");
    let agent = &mesh.agents[0];
    let sidecar = mesh.start_sidecar("federated", &yaml).await;
    let partner_config = |identity: IdentityWatch| {
        let mut config = certs::tls::client_config(identity, BACKEND.parse().unwrap()).unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    };
    let inbound = sidecar.inbound_addr.unwrap();
    let connected = || {
        let config = partner_config(IdentityWatch::fixed(identity.clone()));
        async move { tls_connect(inbound, config).await.ok() }
    };
    let mut conn = eventually(Duration::from_secs(10), "the partner's bundle is trusted", connected).await;

    agent.set_federated_raw("spiffe://partner.example", None);
    agent.rotate_now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await.expect("connection still open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // New handshakes are refused too (under TLS 1.3 the client learns it at its first read).
    let config = partner_config(IdentityWatch::fixed(identity));
    if let Ok(mut refused) = tls_connect(inbound, config).await {
        let read = tokio::time::timeout(Duration::from_secs(10), refused.read(&mut buf)).await.unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stream_outlives_the_callers_certificate() {
    let mesh = Mesh::start().await;
    let ttl = Duration::from_secs(3);
    let identity = mesh.ca.identity(&REPORT.parse().unwrap(), ttl, &[]).unwrap();
    let mut config =
        certs::tls::client_config(IdentityWatch::fixed(Arc::new(identity)), BACKEND.parse().unwrap()).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let started = Instant::now();
    let tls = tls_connect(mesh.inbound(), Arc::new(config)).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("https://budget-backend/sse").body(Empty::<bytes::Bytes>::new()).unwrap();
    let mut body = sender.send_request(req).await.unwrap().into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "data: first\n\n");
    // The app holds the stream open; the certificate expires after 3 s.
    let next =
        tokio::time::timeout(Duration::from_secs(20), body.frame()).await.expect("the stream outlived its certificate");
    assert!(!matches!(next, Some(Ok(_))), "{next:?}");
    assert!(started.elapsed() >= ttl - Duration::from_secs(2), "cut long before the expiry");
    mesh.app.release_sse.notify_one();
}

/// Finished streams leave nothing running: a task per streamed response
/// that slept until the caller's certificate expired added up to gigabytes
/// under traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_streams_leave_nothing_behind() {
    let mesh = Mesh::start().await;
    let tls = mesh.client_tls(REPORT, &[b"h2"]);
    let io = TokioIo::new(tls_connect(mesh.inbound(), tls).await.unwrap());
    let (sender, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(conn);
    let alive = || tokio::runtime::Handle::current().metrics().num_alive_tasks();
    let get = |mut sender: hyper::client::conn::http2::SendRequest<Empty<bytes::Bytes>>| async move {
        let req = hyper::Request::get("https://budget-backend/chunked").body(Empty::<bytes::Bytes>::new()).unwrap();
        let body = sender.send_request(req).await.unwrap().into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "one,two");
    };
    get(sender.clone()).await;
    let before = alive();
    for _ in 0..300 {
        get(sender.clone()).await;
    }
    let settled = || async { (alive() < before + 50).then_some(()) };
    eventually(Duration::from_secs(10), "tasks back to where they were", settled).await;
    assert!(mesh.backend.inbound.as_ref().unwrap().connections().len() <= 2, "registrations left behind");
}

/// An upgraded stream keeps its connection's slot under
/// `limits.max_connections` (it is still a socket) and ends after
/// `idle_timeout` without a byte either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_count_against_the_connection_cap_and_end_when_idle() {
    use tokio::io::AsyncWriteExt;
    let mesh = Mesh::start().await;
    let yaml = mesh
        .sidecar_yaml("tunnels", mesh.app.addr)
        .replace("  header_timeout: 1s\n", "  header_timeout: 1s\n  idle_timeout: 2s\n")
        + "limits: {max_connections: 1}\n";
    let sidecar = mesh.start_sidecar("tunnels", &yaml).await;
    let inbound = sidecar.inbound_addr.unwrap();
    let tls = mesh.client_tls(REPORT, &[b"http/1.1"]);
    let mut ws = tls_connect(inbound, tls.clone()).await.unwrap();
    ws.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(ws.read(&mut byte).await.unwrap(), 1);
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    // The tunnel holds the only slot: another caller's handshake waits in the backlog.
    let waiting = tokio::spawn(tls_connect(inbound, tls.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "a connection was accepted past the cap while a tunnel held the slot");
    // Idle for 2 s: the tunnel ends, its slot frees, the waiting connection is served.
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), ws.read(&mut buf)).await.expect("the idle tunnel stays");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let served = tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("never accepted").unwrap();
    assert!(served.is_ok(), "{served:?}");
}

/// With `inbound.tls_resumption: true`, a resumed session skips the client
/// verifier: its chain is judged against the current bundles after the
/// handshake, so a removed federated bundle refuses it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_is_judged_against_the_current_bundles() {
    use tokio::io::AsyncWriteExt;
    let mesh = Mesh::start().await;
    let (identity, yaml) = federate_partner(&mesh, "resuming");
    let agent = &mesh.agents[0];
    let yaml = yaml.replace("  header_timeout: 1s\n", "  header_timeout: 1s\n  tls_resumption: true\n");
    let sidecar = mesh.start_sidecar("resuming", &yaml).await;
    let mut config = certs::tls::client_config(IdentityWatch::fixed(identity), BACKEND.parse().unwrap()).unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = rustls::client::Resumption::in_memory_sessions(16);
    let config = Arc::new(config);
    let inbound = sidecar.inbound_addr.unwrap();
    // Answered (403: the partner has no policy entry), so the session is usable.
    let answer = |config: Arc<rustls::ClientConfig>| async move {
        let mut tls = tls_connect(inbound, config).await.ok()?;
        tls.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.ok()?;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
        let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        (!out.is_empty()).then_some((String::from_utf8_lossy(&out).into_owned(), resumed))
    };
    let (first, resumed) = eventually(Duration::from_secs(10), "a full handshake", || answer(config.clone())).await;
    assert!(first.starts_with("HTTP/1.1 403") && !resumed, "{first}");
    let (second, resumed) = answer(config.clone()).await.unwrap();
    assert!(second.starts_with("HTTP/1.1 403") && resumed, "the session resumes: {second}");

    // Without the setting (the mesh's backend), the same kind of client never
    // resumes: every connection runs the client verifier.
    let mut keeping = mesh.client_tls(REPORT, &[b"http/1.1"]).as_ref().clone();
    keeping.resumption = rustls::client::Resumption::in_memory_sessions(16);
    let keeping = Arc::new(keeping);
    for attempt in 0..3 {
        let mut tls = tls_connect(mesh.inbound(), keeping.clone()).await.unwrap();
        // A whole exchange, so the client reads any session ticket the server sends.
        tls.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
        assert!(out.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&out));
        assert_eq!(tls.get_ref().1.handshake_kind(), Some(rustls::HandshakeKind::Full), "attempt {attempt}");
    }

    agent.set_federated_raw("spiffe://partner.example", None);
    agent.rotate_now();
    let refused = || {
        let config = config.clone();
        async move { answer(config).await.is_none().then_some(()) }
    };
    eventually(Duration::from_secs(10), "the resumed session refused", refused).await;
}

/// A long upload (a request body of unknown length) is judged again like a
/// streaming response: a risk push cuts what it still sends to the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_risk_push_cuts_an_open_upload() {
    use tokio::io::AsyncWriteExt;
    let mesh = Mesh::start().await;
    let tls = mesh.client_tls(REPORT, &[b"http/1.1"]);
    let conn = tls_connect(mesh.inbound(), tls).await.unwrap();
    let (mut reader, mut writer) = tokio::io::split(conn);
    writer.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n").await.unwrap();
    let uploading = tokio::spawn(async move {
        // A chunk every 50 ms, for as long as the sidecar takes them.
        while writer.write_all(b"5\r\nhello\r\n").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let arrived = || async { mesh.app.paths().contains(&"/upload".to_owned()).then_some(()) };
    eventually(Duration::from_secs(10), "the upload reached the app", arrived).await;

    let push = format!(r#"{{"spiffe_id": "{REPORT}", "risk_level": "high"}}"#);
    let mgmt = mesh.backend.mgmt_addr.unwrap();
    assert_eq!(call(mgmt, "PUT", "/mgmt/agent-risk", Some(ADMIN_KEY), Some(&push), &[]).await.0, 200);
    audit_cut(&mesh, "high_risk_agent_blocked").await;
    // The caller gets an answer (or a closed connection) instead of uploading forever.
    let mut out = vec![0u8; 256];
    let answer = tokio::time::timeout(Duration::from_secs(10), reader.read(&mut out)).await.expect("still uploading");
    if let Ok(n) = answer {
        let text = String::from_utf8_lossy(&out[..n]).into_owned();
        assert!(n == 0 || text.starts_with("HTTP/1.1 5"), "{text}");
    }
    uploading.abort();
}

/// A change made while the app was still answering finds no registration
/// to judge; the stream registered afterwards is judged then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_while_the_app_answers_still_reaches_the_stream() {
    let mesh = Mesh::start().await;
    let tls = mesh.client_tls(REPORT, &[b"h2"]);
    let io = TokioIo::new(tls_connect(mesh.inbound(), tls).await.unwrap());
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("https://budget-backend/slow-sse").body(Empty::<bytes::Bytes>::new()).unwrap();
    let response = tokio::spawn(async move { sender.send_request(req).await });
    let arrived = || async { mesh.app.paths().contains(&"/slow-sse".to_owned()).then_some(()) };
    eventually(Duration::from_secs(10), "the request reached the app", arrived).await;

    // Judged and forwarded; now, before the app answers, the caller is quarantined.
    let push = format!(r#"{{"spiffe_id": "{REPORT}", "risk_level": "high"}}"#);
    let mgmt = mesh.backend.mgmt_addr.unwrap();
    assert_eq!(call(mgmt, "PUT", "/mgmt/agent-risk", Some(ADMIN_KEY), Some(&push), &[]).await.0, 200);
    mesh.app.release_slow.notify_one();
    // Whatever arrived before the cut, the stream ends: reset before its
    // head reached the client (the cut can win that race), or after.
    match response.await.unwrap() {
        Ok(response) => {
            let mut body = response.into_body();
            let frames = async { while let Some(Ok(_)) = body.frame().await {} };
            let ended = tokio::time::timeout(Duration::from_secs(10), frames).await;
            assert!(ended.is_ok(), "the late stream outlived the quarantine");
        }
        Err(e) => assert!(e.to_string().contains("reset") || format!("{e:?}").contains("Reset"), "{e:?}"),
    }
    audit_cut(&mesh, "high_risk_agent_blocked").await;
}
