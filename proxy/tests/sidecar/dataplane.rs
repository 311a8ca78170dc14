//! The request path: identity headers, header hygiene, every request on a
//! connection evaluated (keep-alive, pipelining, HTTP/2), streaming bodies,
//! upgrades, and live allow-list changes on open connections.

use std::time::Duration;

use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::mesh::{MENUS, Mesh, REPORT};
use super::support::{eventually, http, raw_exchange, read_reply, statuses, tls_connect};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_identity_reaches_the_app_and_spoofed_headers_do_not() {
    let mesh = Mesh::start().await;
    let spoofed = [
        ("X-Spiffe-Caller-Id", "spiffe://aim.example/admin"),
        ("x_spiffe_caller_id", "spiffe://aim.example/admin"),
        ("X-SPIFFE-Entra-Agent-Id", "00000000-0000-0000-0000-000000000000"),
        ("x-spiffe-trust-domain", "evil.example"),
        ("Forwarded", "for=10.0.0.1"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-Request-Id", "attacker-chosen"),
        ("Connection", "X-Hop-Secret"),
        ("X-Hop-Secret", "should-not-pass"),
        ("Authorization", "Bearer passed-on"),
    ];
    let reply =
        http(mesh.report.outbound_addr.unwrap(), "GET", "budget-backend:8080", "/budget/read?q=1", &spoofed).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["caller"], REPORT);

    let seen = mesh.app.seen().pop().unwrap();
    assert_eq!(seen.uri, "/budget/read?q=1");
    assert_eq!(seen.header("x-spiffe-caller-id"), Some(REPORT));
    assert_eq!(seen.header("x-spiffe-trust-domain"), Some("aim.microsoft.com"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("authorization"), Some("Bearer passed-on"));
    for (name, value) in &seen.headers {
        assert!(
            name != "x_spiffe_caller_id" && name != "forwarded" && name != "x-hop-secret" && name != "x-forwarded-host",
            "{name} reached the app"
        );
        assert!(!name.starts_with("x-spiffe-entra"), "{name} reached the app");
        assert!(value != "spiffe://aim.example/admin" && value != "attacker-chosen", "{name}: {value} reached the app");
    }
    assert!(reply.headers.contains_key("x-request-id"));

    // The same headers sent straight to the inbound listener by a peer (not
    // through our own outbound, which strips them first), and identity in a
    // trailer of a chunked body.
    let mut raw =
        String::from("POST /budget/write HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n");
    for (name, value) in spoofed {
        raw += &format!("{name}: {value}\r\n");
    }
    raw += "\r\n5\r\nhello\r\n0\r\nX-Spiffe-Caller-Id: spiffe://aim.example/admin\r\nx-spiffe_caller_id: spiffe://aim.example/admin\r\nX-Checksum: c0ffee\r\n\r\n";
    let tls = mesh.client_tls(REPORT, &[b"http/1.1"]);
    let out = super::support::raw_exchange(mesh.inbound(), tls, raw.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(statuses(&out), [200], "{out}");
    let seen = mesh.app.seen().pop().unwrap();
    assert_eq!((seen.uri.as_str(), seen.header("x-spiffe-caller-id")), ("/budget/write", Some(REPORT)));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    for (name, value) in &seen.headers {
        assert!(
            name != "x_spiffe_caller_id" && name != "forwarded" && name != "x-hop-secret" && name != "x-forwarded-host",
            "{name} reached the app directly"
        );
        assert!(!name.starts_with("x-spiffe-entra"), "{name} reached the app directly");
        assert!(
            value != "spiffe://aim.example/admin" && value != "attacker-chosen" && value != "evil.example",
            "{name}: {value} reached the app directly"
        );
    }
    // The app connection is HTTP/1.1 and a `Trailer` declaration is hop-by-hop:
    // no request trailer reaches the app, so none can carry identity.
    let trailers = mesh.app.trailers.lock().unwrap().clone();
    assert!(trailers.is_empty(), "{trailers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_and_pipelined_requests_are_each_evaluated() {
    let mesh = Mesh::start().await;
    let tls = mesh.client_tls(REPORT, &[b"http/1.1"]);

    // Keep-alive: several requests on one connection, each forwarded with identity.
    let io = TokioIo::new(tls_connect(mesh.inbound(), tls.clone()).await.unwrap());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    for i in 0..5 {
        let req =
            hyper::Request::get(format!("/ka/{i}")).header("host", "x").body(Empty::<bytes::Bytes>::new()).unwrap();
        assert_eq!(read_reply(ready(&mut sender).await.send_request(req).await.unwrap()).await.status, 200);
    }
    let bad =
        hyper::Request::get("/ka/%2e%2e/%2e%2e/etc").header("host", "x").body(Empty::<bytes::Bytes>::new()).unwrap();
    assert_eq!(
        read_reply(ready(&mut sender).await.send_request(bad).await.unwrap()).await.denied(),
        ("http".into(), "bad_path".into())
    );

    // Pipelined: three requests in one write, the middle one refused.
    let raw = b"GET /pipe/1 HTTP/1.1\r\nHost: x\r\n\r\nGET /pipe/%2F HTTP/1.1\r\nHost: x\r\n\r\nGET /pipe/3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let out = raw_exchange(mesh.inbound(), tls, raw, Duration::from_secs(5)).await;
    assert_eq!(statuses(&out), [200, 400, 200], "{out}");
    let paths = mesh.app.paths();
    assert!(paths.contains(&"/pipe/1".to_owned()) && paths.contains(&"/pipe/3".to_owned()));
    assert!(!paths.iter().any(|p| p.contains("%2F") || p.contains("/etc")), "{paths:?}");
    for seen in mesh.app.seen() {
        assert_eq!(seen.header("x-spiffe-caller-id"), Some(REPORT), "{seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_are_each_evaluated() {
    let mesh = Mesh::start().await;
    let tls = tls_connect(mesh.inbound(), mesh.client_tls(REPORT, &[b"h2"])).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let mut streams = Vec::new();
    for i in 0..10 {
        let mut sender = sender.clone();
        let path =
            if i == 5 { "https://budget-backend/h2/a;b".to_owned() } else { format!("https://budget-backend/h2/{i}") };
        streams.push(tokio::spawn(async move {
            let req = hyper::Request::get(path).body(Empty::<bytes::Bytes>::new()).unwrap();
            read_reply(sender.send_request(req).await.unwrap()).await.status
        }));
    }
    let mut codes = Vec::new();
    for s in streams {
        codes.push(s.await.unwrap());
    }
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 9, "{codes:?}");
    assert_eq!(codes[5], 400);
    let h2_paths: Vec<String> = mesh.app.paths().into_iter().filter(|p| p.starts_with("/h2/")).collect();
    assert_eq!(h2_paths.len(), 9, "{h2_paths:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_and_large_bodies_flow_both_ways() {
    let mesh = Mesh::start().await;
    let outbound = mesh.report.outbound_addr.unwrap();

    // SSE: the first event arrives while the app is still holding the stream open.
    let body = open_sse(outbound).await;
    mesh.app.release_sse.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "data: second\n\n");

    // 8 MiB up, 8 MiB down.
    let tcp = tokio::net::TcpStream::connect(outbound).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let up = vec![b'a'; 8 << 20];
    let req = hyper::Request::post("/upload")
        .header("host", "budget-backend")
        .body(Full::new(bytes::Bytes::from(up)))
        .unwrap();
    let reply = read_reply(ready(&mut sender).await.send_request(req).await.unwrap()).await;
    assert_eq!(reply.json()["body_len"], 8 << 20);
    let req = hyper::Request::get(format!("/big?bytes={}", 8 << 20))
        .header("host", "budget-backend")
        .body(Full::new(bytes::Bytes::new()))
        .unwrap();
    let down =
        ready(&mut sender).await.send_request(req).await.unwrap().into_body().collect().await.unwrap().to_bytes();
    assert_eq!(down.len(), 8 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_sse_stream_ends_when_its_caller_is_removed() {
    let mesh = Mesh::start().await;
    let mut body = open_sse(mesh.report.outbound_addr.unwrap()).await;

    // The app keeps the stream open; the caller leaves the allow-list.
    mesh.set_allowed(&[MENUS]).await;
    let next = tokio::time::timeout(Duration::from_secs(5), body.frame()).await.expect("the stream was cut");
    assert!(!matches!(next, Some(Ok(_))), "nothing more reaches a removed caller: {next:?}");
    mesh.app.release_sse.notify_one();
}

/// Opens the app's `/sse` through the outbound sidecar; returns the body once
/// its first event arrived (the app holds the stream open until `release_sse`).
pub async fn open_sse(outbound: std::net::SocketAddr) -> hyper::body::Incoming {
    let tcp = tokio::net::TcpStream::connect(outbound).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("/sse").header("host", "budget-backend").body(Empty::<bytes::Bytes>::new()).unwrap();
    let mut body = sender.send_request(req).await.unwrap().into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "data: first\n\n");
    body
}

/// Sends an upgrade request through the outbound sidecar; returns the raw stream after `101`.
pub async fn open_upgrade(outbound: std::net::SocketAddr) -> tokio::net::TcpStream {
    let mut tcp = tokio::net::TcpStream::connect(outbound).await.unwrap();
    tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: budget-backend\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(
            tcp.read(&mut byte).await.unwrap(),
            1,
            "closed during the upgrade: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tcp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_echoes_through_two_sidecars_and_closes_when_the_caller_is_removed() {
    let mesh = Mesh::start().await;
    let mut ws = open_upgrade(mesh.report.outbound_addr.unwrap()).await;
    for msg in [&b"hello"[..], b"through two sidecars"] {
        ws.write_all(msg).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        ws.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, msg);
    }
    // Also an open keep-alive mTLS connection of the same caller.
    let io = TokioIo::new(tls_connect(mesh.inbound(), mesh.client_tls(REPORT, &[b"http/1.1"])).await.unwrap());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    let conn = tokio::spawn(conn);
    let req = || hyper::Request::get("/open").header("host", "x").body(Empty::<bytes::Bytes>::new()).unwrap();
    assert_eq!(read_reply(ready(&mut sender).await.send_request(req()).await.unwrap()).await.status, 200);
    let seen_before = mesh.app.seen().len();

    mesh.set_allowed(&[MENUS]).await;

    // The upgraded stream is closed within a second (generous deadline for a loaded machine).
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), ws.read(&mut buf)).await.expect("stream still open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // The open connection serves nothing more: 403 mtls/not_allowed, or closed.
    // Closed by the sidecar (hyper reports that as closed, canceled or reset), or refused:
    if let Ok(response) = ready_or_closed(&mut sender).await.send_request(req()).await {
        assert_eq!(read_reply(response).await.denied(), ("mtls".into(), "not_allowed".into()));
    }
    eventually(Duration::from_secs(5), "connection closed", || async { conn.is_finished().then_some(()) }).await;
    assert_eq!(mesh.app.seen().len(), seen_before, "nothing reached the app after the removal");
    // New handshakes are refused.
    let refused = tls_connect(mesh.inbound(), mesh.client_tls(REPORT, &[b"http/1.1"])).await;
    let out = match refused {
        Err(_) => String::new(),
        Ok(mut tls) => {
            let _ = tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
            let mut out = Vec::new();
            let _ = tls.read_to_end(&mut out).await;
            String::from_utf8_lossy(&out).into_owned()
        }
    };
    assert!(statuses(&out).is_empty(), "{out}");
}

/// HTTP/1 senders must be ready before each request on a kept-alive connection.
async fn ready<B: hyper::body::Body + 'static>(
    sender: &mut hyper::client::conn::http1::SendRequest<B>,
) -> &mut hyper::client::conn::http1::SendRequest<B> {
    sender.ready().await.unwrap();
    sender
}

/// Like [`ready`], but a closed connection is an acceptable outcome for the caller to check.
async fn ready_or_closed<B: hyper::body::Body + 'static>(
    sender: &mut hyper::client::conn::http1::SendRequest<B>,
) -> &mut hyper::client::conn::http1::SendRequest<B> {
    let _ = sender.ready().await;
    sender
}

/// A refused caller that sends its request right after its side of the
/// TLS 1.3 handshake still reads the refusal (the alert), not a reset: that
/// is what lets its sidecar answer `upstream_rejected_identity`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_caller_reads_the_alert_even_with_its_request_in_flight() {
    let mesh = Mesh::start().await;
    let tls = mesh.client_tls(MENUS, &[b"http/1.1"]);
    for attempt in 0..20 {
        let tcp = tokio::net::TcpStream::connect(mesh.inbound()).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("budget-backend").unwrap();
        // Our side of the handshake completes: the server judges the certificate afterwards.
        let mut stream = tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp).await.unwrap();
        let request = b"GET /budget/read HTTP/1.1\r\nhost: x\r\n\r\n";
        let sent = async {
            stream.write_all(request).await?;
            stream.flush().await?;
            // The refusal is on its way; the caller goes on writing (an h2 client
            // sends its preface, settings and first request in a row) before reading.
            stream.get_ref().0.readable().await?;
            stream.write_all(request).await?;
            stream.flush().await?;
            let mut buf = [0u8; 64];
            stream.read(&mut buf).await
        };
        let err = sent.await.expect_err("the caller is not on the allow-list");
        let alert = err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
        assert!(matches!(alert, Some(rustls::Error::AlertReceived(_))), "attempt {attempt}: {err:?}");
    }
}

/// Sent straight to the inbound by a direct mTLS client (no outbound sidecar
/// in between to clean anything): identity, forwarding and request-ID
/// headers with mixed `-`/`_` separators, underscore names and method
/// overrides never reach the app; a CGI/WSGI app would read each of them as
/// the header the sidecar sets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disguised_identity_underscore_and_override_headers_never_reach_the_app() {
    let mesh = Mesh::start().await;
    let tls = mesh.client_tls(REPORT, &[b"http/1.1"]);
    let raw = "POST /budget/write HTTP/1.1\r\nHost: x\r\n\
        x-spiffe_caller_id: spiffe://aim.example/admin\r\n\
        x_spiffe-caller-id: spiffe://aim.example/admin\r\n\
        X-Spiffe-Caller_Id: spiffe://aim.example/admin\r\n\
        x-forwarded_for: 10.0.0.1\r\n\
        x-request_id: attacker-chosen\r\n\
        x_forwarded_client_cert: Hash=evil\r\n\
        my_custom_header: 1\r\n\
        X-HTTP-Method-Override: DELETE\r\n\
        X-HTTP-Method: DELETE\r\n\
        X-Method-Override: DELETE\r\n\
        X-App: kept\r\n\
        Content-Length: 0\r\nConnection: close\r\n\r\n";
    let out = raw_exchange(mesh.inbound(), tls, raw.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(statuses(&out), [200], "{out}");
    let seen = mesh.app.seen().pop().unwrap();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.header("x-app"), Some("kept"));
    assert_eq!(seen.header("x-spiffe-caller-id"), Some(REPORT));
    for (name, value) in &seen.headers {
        assert!(!name.contains('_'), "{name}: {value} reached the app");
        assert!(!name.contains("method"), "{name}: {value} reached the app");
        assert!(
            !["spiffe://aim.example/admin", "10.0.0.1", "attacker-chosen", "Hash=evil"].contains(&value.as_str()),
            "{name}: {value} reached the app"
        );
    }
}

/// Removing a caller through `PUT /mgmt/mtls-policy` (not a config reload)
/// cuts its open WebSocket and SSE streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allow_list_put_cuts_the_removed_callers_streams() {
    let mesh = Mesh::start().await;
    let out = mesh.report.outbound_addr.unwrap();
    let mut sse = open_sse(out).await;
    let mut ws = open_upgrade(out).await;
    ws.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    ws.read_exact(&mut echo).await.unwrap();

    let body = format!(r#"{{"allowed_ids": ["{MENUS}"]}}"#);
    let mgmt = mesh.backend.mgmt_addr.unwrap();
    let (status, _, answer) =
        super::mgmt::call(mgmt, "PUT", "/mgmt/mtls-policy", Some(super::mesh::ADMIN_KEY), Some(&body), &[]).await;
    assert_eq!(status, 200, "{answer}");

    // Only the removal can end them: the app holds both open, nothing idles out within the deadline.
    let next = tokio::time::timeout(Duration::from_secs(10), sse.frame()).await.expect("the SSE stream was cut");
    assert!(!matches!(next, Some(Ok(_))), "nothing more reaches a removed caller: {next:?}");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), ws.read(&mut buf)).await.expect("the WebSocket was cut");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    mesh.app.release_sse.notify_one();
}

/// The caller's and the target's audit events of one call join: the target
/// records the caller sidecar's request id as `peer_request_id` (its own
/// `request_id` stays its own, and the app sees only that one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_audit_events_of_one_call_join() {
    let mesh = Mesh::start().await;
    let reply = http(mesh.report.outbound_addr.unwrap(), "GET", "budget-backend", "/joined", &[]).await;
    assert_eq!(reply.status, 200);
    let find = |app: &proxy::app::App| {
        let events = app.audit.recent(50, None, None);
        events.into_iter().find(|e| e.path.as_deref() == Some("/joined")).unwrap()
    };
    let (caller, target) = (find(&mesh.report), find(&mesh.backend));
    let caller_id = caller.request_id.clone().unwrap();
    assert_eq!(target.peer_request_id.as_deref(), Some(caller_id.as_str()));
    assert_ne!(target.request_id.as_deref(), Some(caller_id.as_str()));
    let seen = mesh.app.seen().pop().unwrap();
    assert_eq!(seen.header("x-request-id"), target.request_id.as_deref(), "the app sees the target's id");
    let json = serde_json::to_value(target.as_ref()).unwrap();
    assert_eq!(json["peer_request_id"], caller_id.as_str());
}

/// `a2a_in_flight_requests{direction}` counts a request until its response
/// body ends: an open SSE stream is in flight on both sidecars, then not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_stream_is_in_flight_until_it_ends() {
    let mesh = Mesh::start().await;
    let gauge = |app: &proxy::app::App, direction: &'static str| {
        let telemetry = app.telemetry_addr;
        async move {
            let metrics = super::support::get(telemetry, "/metrics").await.1;
            let name = format!("a2a_in_flight_requests{{direction=\"{direction}\"}} ");
            metrics.lines().find_map(|l| l.strip_prefix(&name)?.parse::<i64>().ok()).unwrap()
        }
    };
    assert_eq!((gauge(&mesh.report, "outbound").await, gauge(&mesh.backend, "inbound").await), (0, 0));
    let mut body = open_sse(mesh.report.outbound_addr.unwrap()).await;
    assert_eq!((gauge(&mesh.report, "outbound").await, gauge(&mesh.backend, "inbound").await), (1, 1));
    mesh.app.release_sse.notify_one();
    while let Some(Ok(_)) = body.frame().await {}
    let ended = || async {
        (gauge(&mesh.report, "outbound").await == 0 && gauge(&mesh.backend, "inbound").await == 0).then_some(())
    };
    eventually(Duration::from_secs(10), "no request in flight once the stream ended", ended).await;
}
