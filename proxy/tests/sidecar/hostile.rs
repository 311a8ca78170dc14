//! Hostile HTTP: smuggling attempts, bad paths, oversized heads and slow
//! clients each get their documented outcome, and the app never sees an
//! unevaluated or ambiguously framed request.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::mesh::{Mesh, REPORT};
use super::support::{raw_exchange, statuses, tls_connect};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_attempts_never_reach_the_app_unevaluated() {
    let mesh = Mesh::start().await;
    let tls = mesh.client_tls(REPORT, &[b"http/1.1"]);
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let cases: [(&str, String, &[u16]); 5] = [
        // CL + TE: re-framed as chunked, and the connection closes after it.
        (
            "CL+TE",
            format!(
                "POST /clte HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            &[200],
        ),
        (
            "two CLs",
            format!("POST /cl2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!{smuggled}"),
            &[400],
        ),
        (
            "xchunked",
            format!("POST /xte HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"),
            &[400],
        ),
        (
            "space before colon",
            format!("POST /sp HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\nhello{smuggled}"),
            &[400],
        ),
        (
            "bad chunk size",
            format!(
                "POST /chunk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n{smuggled}"
            ),
            &[],
        ),
    ];
    for (name, raw, want) in cases {
        let out = raw_exchange(mesh.inbound(), tls.clone(), raw.as_bytes(), Duration::from_secs(10)).await;
        let got = statuses(&out);
        if want.is_empty() {
            // The body is broken mid-stream: there is an answer, and it is not a success.
            assert!(!got.is_empty() && got.iter().all(|s| *s >= 400), "{name}: {out}");
        } else {
            assert_eq!(got, want, "{name}: {out}");
        }
    }
    let paths = mesh.app.paths();
    assert!(!paths.iter().any(|p| p == "/smuggled"), "a smuggled request reached the app: {paths:?}");
    for path in ["/cl2", "/xte", "/sp"] {
        assert!(!paths.iter().any(|p| p == path), "{path} reached the app: {paths:?}");
    }
    // The CL+TE request arrived re-framed as chunked (RFC 9112 6.3: Transfer-Encoding
    // wins), with no Content-Length next to it.
    let clte = mesh.app.seen().into_iter().find(|s| s.uri == "/clte").unwrap();
    assert_eq!((clte.header("transfer-encoding"), clte.header("content-length")), (Some("chunked"), None), "{clte:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_paths_and_targets() {
    let mesh = Mesh::start().await;
    let tls = mesh.client_tls(REPORT, &[b"http/1.1"]);
    for path in [
        "/a%2Fb",
        "/a%2fb",
        "/a%5Cb",
        "/a\\b",
        "/../etc/passwd",
        "/a/%2e%2e/%2e%2e/b",
        "/a%00b",
        "/a;jsessionid=1",
        "/a%ffb",
        "/a%0Ab",
        "/a%0d%0aX-Injected:%20yes",
        "/a%09b",
        "/a%7Fb",
    ] {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let out = raw_exchange(mesh.inbound(), tls.clone(), raw.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(statuses(&out), [400], "{path}: {out}");
        assert!(out.contains(r#""reason":"bad_path""#) && out.contains(r#""layer":"http""#), "{path}: {out}");
        assert!(out.to_ascii_lowercase().contains("x-denied-by: a2a-sidecar"), "{out}");
    }
    assert!(mesh.app.seen().is_empty(), "{:?}", mesh.app.paths());

    // Absolute form never chooses the destination: the app gets the canonical path.
    let raw =
        b"GET http://evil.example:9999/x/../budget/read HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n";
    let out = raw_exchange(mesh.inbound(), tls.clone(), raw, Duration::from_secs(5)).await;
    assert_eq!(statuses(&out), [200], "{out}");
    let seen = mesh.app.seen().pop().unwrap();
    assert_eq!(seen.uri, "/budget/read");
    assert_eq!(seen.header("host"), Some(mesh.app.addr.to_string().as_str()));

    // Forwarded path is the judged one, re-encoded: the app decodes exactly what was judged.
    let raw = b"GET /a/./b//c%20d/%252F HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let out = raw_exchange(mesh.inbound(), tls.clone(), raw, Duration::from_secs(5)).await;
    assert_eq!(statuses(&out), [200], "{out}");
    assert_eq!(mesh.app.seen().pop().unwrap().uri, "/a/b/c%20d/%252F");

    let raw = b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n";
    let out = raw_exchange(mesh.inbound(), tls, raw, Duration::from_secs(5)).await;
    assert_eq!(statuses(&out), [405], "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_get_431_and_slow_clients_are_cut_off() {
    let mesh = Mesh::start().await;
    let tls = mesh.client_tls(REPORT, &[b"http/1.1"]);
    let big = "a".repeat(100 * 1024);
    let raw = format!("GET /big-head HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let out = raw_exchange(mesh.inbound(), tls.clone(), raw.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(statuses(&out), [431], "{}", &out[..out.len().min(200)]);

    // Slowloris: a head that never completes is cut off after header_timeout
    // (1 s here; the idle timeout is 60 s and never runs out while bytes trickle in,
    // so nothing else can cut it within the deadline).
    let mut conn = tls_connect(mesh.inbound(), tls).await.unwrap();
    conn.write_all(b"GET /slow-head HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            // Trickle a byte now and then, as slowloris does; the deadline is for the whole head.
            let _ = conn.write_all(b"X").await;
            let mut buf = [0u8; 256];
            match tokio::time::timeout(Duration::from_millis(200), conn.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the slow client was not cut off");
    assert!(!mesh.app.paths().iter().any(|p| p == "/big-head" || p == "/slow-head"));
}

/// A backend sidecar like the mesh's, with short upstream and idle limits and
/// a header timeout far longer than any deadline here (so only the idle
/// timeout can close an idle connection).
async fn short_limits_backend(mesh: &Mesh) -> proxy::app::App {
    let yaml = (super::mesh::backend_yaml(&mesh.dir.path().join("backend.sock"), mesh.app.addr, &[REPORT])
        + &super::mesh::jwt_yaml(&mesh.idp.authority()))
        .replace("upstream_response_timeout: 10s", "upstream_response_timeout: 300ms\n  idle_timeout: 300ms")
        .replace("  header_timeout: 1s\n", "  header_timeout: 60s\n");
    let path = mesh.dir.path().join("short.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut app = proxy::app::App::start(proxy::config::Config::load(&path).unwrap()).await.unwrap();
    app.identity.wait_ready().await.unwrap();
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_app_gets_504_and_idle_connections_are_closed() {
    let mesh = Mesh::start().await;
    let backend = short_limits_backend(&mesh).await;
    let tls = mesh.client_tls(REPORT, &[b"http/1.1"]);
    // The app holds `/slow` until released (after this answer): a 504 naming the
    // upstream timeout can only come from `upstream_response_timeout`.
    let raw = b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let out = raw_exchange(backend.inbound_addr.unwrap(), tls.clone(), raw, Duration::from_secs(10)).await;
    assert_eq!(statuses(&out), [504], "{out}");
    assert!(out.contains(r#""reason":"upstream_timeout""#) && out.contains(r#""layer":"upstream""#), "{out}");
    mesh.app.release_slow.notify_waiters();

    // Idle: one request, then nothing; the sidecar closes the connection.
    let mut conn = tls_connect(backend.inbound_addr.unwrap(), tls).await.unwrap();
    conn.write_all(b"GET /idle HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut out)).await;
    assert!(closed.is_ok(), "idle connection still open");
    assert_eq!(statuses(&String::from_utf8_lossy(&out)), [200]);
}

/// An oversized head is answered 431 every time, also when the caller keeps
/// writing: the sidecar reads and discards what is left for a bounded time
/// before it closes (nginx's lingering close), instead of closing with
/// unread data, which makes the kernel send a reset that can destroy the
/// 431 before the caller reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_head_is_answered_431_not_reset() {
    let mesh = Mesh::start().await;
    let tls = mesh.client_tls(REPORT, &[b"http/1.1"]);
    let head = format!("GET /big-head HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(16 << 20));
    for attempt in 0..3 {
        let mut conn = tls_connect(mesh.inbound(), tls.clone()).await.unwrap();
        // Like most clients, write the whole request before reading: the
        // server answers after its 32 KiB limit, while the client still
        // writes (16 MiB is more than the socket buffers hold).
        let written = tokio::time::timeout(Duration::from_secs(10), conn.write_all(head.as_bytes())).await;
        assert!(matches!(written, Ok(Ok(()))), "attempt {attempt}: the request could not be written: {written:?}");
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "attempt {attempt}: no answer and no close");
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 431"), "attempt {attempt}: {read:?} {}", &out[..out.len().min(200)]);
    }
}

/// `limits.max_connections` caps what one listener holds: more connections
/// wait in the kernel's backlog (their handshake does not progress) until
/// one closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_holds_at_most_max_connections() {
    let mesh = Mesh::start().await;
    let sidecar = mesh.sidecar_with("capped", mesh.app.addr, "", "limits: {max_connections: 2}\n").await;
    let inbound = sidecar.inbound_addr.unwrap();
    let tls = mesh.client_tls(REPORT, &[b"http/1.1"]);
    let first = tls_connect(inbound, tls.clone()).await.unwrap();
    let _second = tls_connect(inbound, tls.clone()).await.unwrap();
    let open = || async {
        let text = super::support::get(sidecar.telemetry_addr, "/metrics").await.1;
        text.lines().find(|l| l.starts_with("a2a_open_connections{listener=\"inbound\"}")).map(str::to_owned)
    };
    let line = super::support::eventually(Duration::from_secs(10), "open connections reported", open).await;
    assert!(line.ends_with(" 2"), "{line}");

    let third = tokio::spawn(tls_connect(inbound, tls.clone()));
    // Held in the backlog: the handshake cannot complete while both slots are taken.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!third.is_finished(), "a third connection was accepted past the cap");
    drop(first);
    let third = tokio::time::timeout(Duration::from_secs(10), third).await.expect("never accepted").unwrap();
    assert!(third.is_ok(), "{third:?}");
}

/// An unauthenticated peer that never finishes its handshake holds its slot
/// for `inbound.handshake_timeout`, not for the (longer) header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_cut_at_the_handshake_timeout() {
    let mesh = Mesh::start().await;
    // A header timeout far longer than the test's deadline: only the handshake timeout can act.
    let yaml = mesh
        .sidecar_yaml("handshake", mesh.app.addr)
        .replace("  header_timeout: 1s\n", "  header_timeout: 60s\n  handshake_timeout: 300ms\n");
    let sidecar = mesh.start_sidecar("handshake", &yaml).await;
    let mut tcp = tokio::net::TcpStream::connect(sidecar.inbound_addr.unwrap()).await.unwrap();
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0) | Err(_))), "{closed:?}");
    let metrics = super::support::get(sidecar.telemetry_addr, "/metrics").await.1;
    assert!(metrics.contains("a2a_tls_handshakes_total{direction=\"inbound\",result=\"timeout\"} 1"), "{metrics}");
}
