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

/// An app that misbehaves on purpose: `/close` closes the connection after
/// reading the request head (no answer), `/reset` sends a head promising 100
/// bytes, ten of them, then resets the connection.
async fn broken_app() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if tcp.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                if head.starts_with(b"GET /reset ") {
                    let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789").await;
                    let _ = tcp.flush().await;
                }
                // Dropped with SO_LINGER 0: a reset, not a clean close.
                #[allow(deprecated, reason = "a zero linger never blocks the drop: it resets at once")]
                let _ = tcp.set_linger(Some(Duration::ZERO));
            });
        }
    });
    addr
}

async fn upstream_errors(mesh_app: &proxy::app::App, kind: &str) -> String {
    let line = format!("a2a_upstream_errors_total{{kind=\"{kind}\"}} 1");
    let telemetry = mesh_app.telemetry_addr;
    let counted = || async { super::support::get(telemetry, "/metrics").await.1.contains(&line).then_some(()) };
    super::support::eventually(Duration::from_secs(10), &line, counted).await;
    line
}

/// The outcome table's upstream rows on the inbound side: the local app down
/// (502 `upstream_unavailable`), closing without an answer (502
/// `upstream_error`), resetting mid-response (the caller's body ends in an
/// error, never as a clean short answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_app_down_silent_or_reset_mid_response() {
    use super::mesh::REPORT;
    let mesh = Mesh::start().await;
    let tls = mesh.client_tls(REPORT, &[b"http/1.1"]);
    // A port held by a socket that never listens: refused, and never reused meanwhile.
    let reserved = tokio::net::TcpSocket::new_v4().unwrap();
    reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let down = mesh.sidecar_for("app-down", reserved.local_addr().unwrap(), "").await;
    let raw = b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let out = super::support::raw_exchange(down.inbound_addr.unwrap(), tls.clone(), raw, Duration::from_secs(10)).await;
    assert!(out.starts_with("HTTP/1.1 502") && out.contains(r#""reason":"upstream_unavailable""#), "{out}");
    upstream_errors(&down, "upstream_unavailable").await;

    let broken = mesh.sidecar_for("app-broken", broken_app().await, "").await;
    let inbound = broken.inbound_addr.unwrap();
    let raw = b"GET /close HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let out = super::support::raw_exchange(inbound, tls.clone(), raw, Duration::from_secs(10)).await;
    assert!(out.starts_with("HTTP/1.1 502") && out.contains(r#""reason":"upstream_error""#), "{out}");
    upstream_errors(&broken, "upstream_error").await;

    // Reset after the head: the head (and what came of the body) is passed on,
    // then the caller's connection breaks: it never reads a complete answer.
    let io = hyper_util::rt::TokioIo::new(super::support::tls_connect(inbound, tls).await.unwrap());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let request = hyper::Request::get("/reset").header("host", "x").body(http_body_util::Empty::<bytes::Bytes>::new());
    let response = sender.send_request(request.unwrap()).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(10), http_body_util::BodyExt::collect(response.into_body()))
        .await
        .expect("the broken body ends");
    assert!(body.is_err(), "a reset mid-response must not look like a complete answer");
}

/// The outcome table's rows on the outbound side: no answer head within
/// `outbound.response_timeout` is 504 `upstream_timeout`; `CONNECT` is 405.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_timeout_and_connect() {
    let mesh = Mesh::start().await;
    let yaml = std::fs::read_to_string(mesh.dir.path().join("report.yaml"))
        .unwrap()
        .replace("response_timeout: 10s", "response_timeout: 300ms");
    let impatient = mesh.start_sidecar("report-impatient", &yaml).await;
    let out = impatient.outbound_addr.unwrap();
    // The app holds `/slow` until released, after this answer.
    let reply = http(out, "GET", "budget-backend", "/slow", &[]).await;
    assert_eq!((reply.status, reply.denied()), (504, ("upstream".into(), "upstream_timeout".into())), "{reply:?}");
    mesh.app.release_slow.notify_waiters();
    upstream_errors(&impatient, "upstream_timeout").await;

    let mut tcp = tokio::net::TcpStream::connect(out).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(b"CONNECT budget-backend:443 HTTP/1.1\r\nHost: budget-backend:443\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("\r\nallow: "), "{answer}");
    assert!(answer.contains(r#""reason":"method_not_allowed""#), "{answer}");
}
