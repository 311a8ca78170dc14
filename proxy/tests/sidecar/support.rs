//! Helpers: the binary, HTTP GETs, polling with a deadline.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

pub fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_a2a-sidecar"));
    cmd.env_remove("SPIFFE_ENDPOINT_SOCKET").env_remove("AZURE_CLIENT_SECRET").env_remove("GRAPH_CLIENT_SECRET");
    cmd
}

pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn write(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path.to_str().unwrap().to_owned()
}

/// `GET path` over plain HTTP/1.1; (status, body).
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let request = hyper::Request::get(path).header("host", "localhost").body(Empty::<bytes::Bytes>::new()).unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, text(&body))
}

pub use certs::dev::eventually;

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// `(layer, reason)` of a deny body.
    pub fn denied(&self) -> (String, String) {
        let json = self.json();
        assert_eq!(self.headers.get("x-denied-by").map(|v| v.to_str().unwrap()), Some("a2a-sidecar"), "{self:?}");
        assert_eq!(json["request_id"].as_str(), self.headers.get("x-request-id").map(|v| v.to_str().unwrap()));
        (json["layer"].as_str().unwrap().to_owned(), json["reason"].as_str().unwrap().to_owned())
    }
}

/// Sends one plain HTTP/1.1 request (to an outbound listener).
pub async fn http(addr: SocketAddr, method: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let mut request = hyper::Request::builder().method(method).uri(path).header("host", host);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = sender.send_request(request.body(Empty::<bytes::Bytes>::new()).unwrap()).await.unwrap();
    read_reply(response).await
}

pub async fn read_reply(response: hyper::Response<hyper::body::Incoming>) -> Reply {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply { status, headers, body: text(&body) }
}

/// Opens mTLS to `addr` with `config`.
pub async fn tls_connect(
    addr: SocketAddr,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("budget-backend").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
    // Under TLS 1.3 a refused client certificate shows up at the first read.
    use tokio::io::AsyncWriteExt;
    tls.flush().await?;
    Ok(tls)
}

/// Writes `raw` on a fresh mTLS connection while reading, until the server
/// closes it (or `within` passes); returns everything read. Reading runs
/// alongside writing: a server may answer (431) and close mid-request.
pub async fn raw_exchange(
    addr: SocketAddr,
    config: std::sync::Arc<rustls::ClientConfig>,
    raw: &[u8],
    within: Duration,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tls = tls_connect(addr, config).await.unwrap();
    let (mut reader, mut writer) = tokio::io::split(tls);
    let raw = raw.to_vec();
    let raw_copy = raw.clone();
    let write = tokio::spawn(async move {
        let _ = writer.write_all(&raw).await;
        let _ = writer.flush().await;
        // Keep the write half open until reading is done, so the server sees no early EOF.
        std::future::pending::<()>().await;
    });
    let mut out = Vec::new();
    // Until the sidecar closes, or `within` (a kept-alive connection after
    // its answers): either way an answer must have come, or it hung.
    let _ = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf).await {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    write.abort();
    assert!(!out.is_empty(), "no answer within {within:?} to {}", text(raw_head(&raw_copy)));
    text(&out)
}

/// The request line of a raw request, for messages.
fn raw_head(raw: &[u8]) -> &[u8] {
    let end = raw.iter().position(|b| *b == b'\r').unwrap_or(raw.len()).min(120);
    &raw[..end]
}

/// Status codes of the HTTP/1.1 responses in a raw byte stream, in order.
pub fn statuses(raw: &str) -> Vec<u16> {
    raw.match_indices("HTTP/1.1 ").filter_map(|(i, _)| raw.get(i + 9..i + 12)?.parse().ok()).collect()
}
