//! Upgrades: only WebSocket (a single `websocket` token, on GET) ever
//! reaches the app as an upgrade. An `h2c` upgrade would turn an allowed
//! request into a raw HTTP/2 tunnel to the app, past every later request's
//! policy check; it is stripped and the request forwarded as an ordinary
//! one, and an app that switches protocols unasked gets a 502, not a tunnel.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::app::SwitchingApp;
use super::mesh::{Mesh, REPORT};
use super::support::{raw_exchange, statuses, tls_connect};

const H2C: &str = "GET /allowed HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";
const WEBSOCKET: &str = "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// Reads one response head (up to the blank line) from `io`.
async fn read_head(io: &mut (impl AsyncReadExt + Unpin)) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(10), io.read(&mut byte)).await.expect("no response").unwrap();
        assert_eq!(n, 1, "closed mid-head: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upgrade_is_an_ordinary_request_and_never_a_tunnel() {
    let mesh = Mesh::start().await;
    let app = SwitchingApp::start(false).await;
    let sidecar = mesh.sidecar_for("switching", app.addr, "").await;
    let tls = mesh.client_tls(REPORT, &[b"http/1.1"]);

    let mut conn = tls_connect(sidecar.inbound_addr.unwrap(), tls).await.unwrap();
    conn.write_all(H2C.as_bytes()).await.unwrap();
    let head = read_head(&mut conn).await;
    assert!(head.starts_with("HTTP/1.1 200"), "the h2c upgrade was forwarded: {head}");
    let mut body = [0u8; 8];
    conn.read_exact(&mut body).await.unwrap();
    assert_eq!(&body, b"ordinary");
    // What follows on the connection is HTTP again, judged request by request.
    conn.write_all(b"GET /a%2Fb HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert!(read_head(&mut conn).await.starts_with("HTTP/1.1 400"));

    let heads = app.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    for banned in ["upgrade:", "http2-settings:", "connection: upgrade"] {
        assert!(!heads[0].contains(banned), "`{banned}` reached the app: {}", heads[0]);
    }
    assert!(heads[0].contains(&format!("x-spiffe-caller-id: {REPORT}")), "{}", heads[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_websocket_get_is_forwarded_as_an_upgrade() {
    let mesh = Mesh::start().await;
    let app = SwitchingApp::start(false).await;
    let sidecar = mesh.sidecar_for("switching", app.addr, "").await;
    let tls = mesh.client_tls(REPORT, &[b"http/1.1"]);
    let inbound = sidecar.inbound_addr.unwrap();

    let mut ws = tls_connect(inbound, tls.clone()).await.unwrap();
    ws.write_all(WEBSOCKET.as_bytes()).await.unwrap();
    let head = read_head(&mut ws).await;
    assert!(head.starts_with("HTTP/1.1 101") && head.to_ascii_lowercase().contains("upgrade: websocket"), "{head}");
    ws.write_all(b"hello").await.unwrap();
    let mut echo = vec![0u8; "tunnel saw 5 bytes: hello".len()];
    ws.read_exact(&mut echo).await.unwrap();
    assert_eq!(echo, b"tunnel saw 5 bytes: hello");

    // Not GET, two tokens, two headers, or no `Connection: upgrade`: ordinary requests.
    for (name, raw) in [
        ("POST", WEBSOCKET.replace("GET /ws", "POST /ws").replace("\r\n\r\n", "\r\nContent-Length: 0\r\n\r\n")),
        ("two tokens", WEBSOCKET.replace("Upgrade: websocket", "Upgrade: websocket, h2c")),
        ("two headers", WEBSOCKET.replace("Upgrade: websocket", "Upgrade: websocket\r\nUpgrade: h2c")),
        ("no connection token", WEBSOCKET.replace("Connection: Upgrade\r\n", "")),
    ] {
        let raw = raw.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n");
        let out = raw_exchange(inbound, tls.clone(), raw.as_bytes(), Duration::from_secs(10)).await;
        assert_eq!(statuses(&out), [200], "{name}: {out}");
        let seen = app.heads().pop().unwrap();
        assert!(!seen.contains("upgrade:"), "{name}: {seen}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_switches_unasked_gets_no_tunnel() {
    let mesh = Mesh::start().await;
    let app = SwitchingApp::start(true).await;
    let sidecar = mesh.sidecar_for("always-101", app.addr, "").await;
    let tls = mesh.client_tls(REPORT, &[b"http/1.1"]);

    let raw = H2C.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    let out = raw_exchange(sidecar.inbound_addr.unwrap(), tls, raw.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(statuses(&out), [502], "{out}");
    assert!(out.contains(r#""reason":"upstream_error""#), "{out}");
    assert!(!out.contains("tunnel saw"), "bytes went through a tunnel: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_can_be_turned_off() {
    let mesh = Mesh::start().await;
    let app = SwitchingApp::start(false).await;
    let sidecar = mesh.sidecar_for("no-upgrades", app.addr, "  upgrades: []\n").await;
    let tls = mesh.client_tls(REPORT, &[b"http/1.1"]);
    let raw = WEBSOCKET.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n");
    let out = raw_exchange(sidecar.inbound_addr.unwrap(), tls, raw.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(statuses(&out), [200], "{out}");
    assert!(!app.heads()[0].contains("upgrade:"), "{:?}", app.heads());
}
