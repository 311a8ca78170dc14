//! Outbound: routing by Host and opt-in prefix, refused targets, and the
//! upstream failures of the outcome table (never a hang).

use std::time::{Duration, Instant};

use super::mesh::{BACKEND, Mesh};
use super::support::http;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_and_their_failures() {
    let mesh = Mesh::start().await;
    let out = mesh.report.outbound_addr.unwrap();

    // Host, port stripped, any case.
    assert_eq!(http(out, "GET", "Budget-Backend:8080", "/budget/read", &[]).await.status, 200);
    // Opt-in path prefix, stripped.
    let reply = http(out, "GET", "localhost", "/bb/budget/read", &[]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(mesh.app.seen().pop().unwrap().uri, "/budget/read");
    assert_eq!(
        http(out, "GET", "localhost", "/bbx/budget/read", &[]).await.denied(),
        ("route".into(), "no_route".into())
    );

    let reply = http(out, "GET", "unknown-service", "/x", &[]).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.denied(), ("route".into(), "no_route".into()));

    let started = Instant::now();
    let reply = http(out, "GET", "down", "/x", &[]).await;
    assert_eq!((reply.status, reply.denied()), (502, ("upstream".into(), "upstream_unavailable".into())));
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());

    let reply = http(out, "GET", "impostor-check", "/x", &[]).await;
    assert_eq!((reply.status, reply.denied()), (502, ("upstream".into(), "upstream_identity_mismatch".into())));

    // The backend refuses employee-menus at the handshake.
    let reply = http(mesh.menus.outbound_addr.unwrap(), "GET", "budget-backend", "/budget/read", &[]).await;
    assert_eq!((reply.status, reply.denied()), (502, ("upstream".into(), "upstream_rejected_identity".into())));
    assert!(!mesh.app.seen().iter().any(|s| s.header("x-spiffe-caller-id") == Some(super::mesh::MENUS)));
    // The backend counts the refusal once its handshake task sees it, which may
    // be after the caller already read the alert.
    let telemetry = mesh.backend.telemetry_addr;
    let counted = || async {
        let metrics = super::support::get(telemetry, "/metrics").await.1;
        metrics.contains(r#"a2a_tls_handshakes_total{direction="inbound",result="not_allowed"}"#).then_some(())
    };
    super::support::eventually(Duration::from_secs(10), "the refusal counted", counted).await;

    let reply = http(out, "GET", "budget-backend", "http://budget-backend/budget/read", &[]).await;
    assert_eq!((reply.status, reply.denied()), (400, ("http".into(), "absolute_form".into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests_and_refuses_new_connections() {
    let mesh = Mesh::start().await;
    let out = mesh.report.outbound_addr.unwrap();
    let inbound = mesh.inbound();
    let slow = tokio::spawn(async move { http(out, "GET", "budget-backend", "/slow", &[]).await });
    super::support::eventually(Duration::from_secs(10), "slow request in flight", || async {
        mesh.app.paths().iter().any(|p| p == "/slow").then_some(())
    })
    .await;

    let Mesh { backend, app, .. } = mesh;
    let draining = tokio::spawn(backend.shutdown());
    super::support::eventually(Duration::from_secs(10), "inbound stops accepting", || async {
        tokio::net::TcpStream::connect(inbound).await.is_err().then_some(())
    })
    .await;
    app.release_slow.notify_one();
    let reply = slow.await.unwrap();
    assert_eq!((reply.status, reply.body.as_str()), (200, "slow done"));
    tokio::time::timeout(Duration::from_secs(10), draining).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_speak_http2_and_upgrades_use_http1() {
    use hyper_util::client::legacy::connect::Connection;
    use proxy::dataplane::upstream::sidecar::SidecarConnector;
    use tower_service::Service;

    let mesh = Mesh::start().await;
    let uri: hyper::Uri = format!("https://{}", mesh.inbound()).parse().unwrap();
    for (http1_only, want_h2) in [(false, true), (true, false)] {
        let mut connector = SidecarConnector::new(
            mesh.identity(super::mesh::REPORT),
            BACKEND.parse().unwrap(),
            Duration::from_secs(2),
            http1_only,
        )
        .unwrap();
        let stream = connector.call(uri.clone()).await.unwrap();
        assert_eq!(stream.connected().is_negotiated_h2(), want_h2, "http1_only: {http1_only}");
    }
}
