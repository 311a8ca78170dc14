//! A test upstream app: records what it receives and serves echo, SSE, slow,
//! large and upgrade routes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

/// What the app saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub seen: Mutex<Vec<Seen>>,
    /// The trailers of every request body the app read (in order).
    pub trailers: Mutex<Vec<(String, String)>>,
    /// Lets `/sse` send its second event and finish.
    pub release_sse: Notify,
    /// Lets `/slow` answer.
    pub release_slow: Notify,
}

type Body = BoxBody<Bytes, Infallible>;

impl TestApp {
    pub async fn start() -> Arc<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = Arc::new(Self {
            addr: listener.local_addr().unwrap(),
            seen: Mutex::new(Vec::new()),
            trailers: Mutex::new(Vec::new()),
            release_sse: Notify::new(),
            release_slow: Notify::new(),
        });
        let serving = app.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let app = serving.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| app.clone().handle(req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        app
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn paths(&self) -> Vec<String> {
        self.seen().into_iter().map(|s| s.uri).collect()
    }

    async fn handle(self: Arc<Self>, mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        let seen = Seen {
            method: req.method().to_string(),
            uri: req.uri().to_string(),
            headers: req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect(),
        };
        self.seen.lock().unwrap().push(seen.clone());
        let path = req.uri().path().to_owned();
        let response = match path.as_str() {
            "/sse" => {
                let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
                let app = self.clone();
                tokio::spawn(async move {
                    let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"data: first\n\n")))).await;
                    app.release_sse.notified().await;
                    let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"data: second\n\n")))).await;
                });
                let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(StreamBody::new(stream).boxed())
                    .unwrap()
            }
            "/chunked" => {
                // A short body of unknown length: answered chunked, ends at once.
                let frames =
                    [Ok(Frame::data(Bytes::from_static(b"one,"))), Ok(Frame::data(Bytes::from_static(b"two")))];
                let stream = tokio_stream::iter(frames);
                Response::new(StreamBody::new(stream).boxed())
            }
            "/slow-sse" => {
                // Answers only when released, then streams until the connection ends.
                self.release_slow.notified().await;
                let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
                tokio::spawn(async move {
                    let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"data: late\n\n")))).await;
                    tx.closed().await;
                });
                let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
                Response::new(StreamBody::new(stream).boxed())
            }
            "/slow" => {
                self.release_slow.notified().await;
                text("slow done")
            }
            "/big" => {
                let n: usize =
                    req.uri().query().and_then(|q| q.strip_prefix("bytes=")).and_then(|v| v.parse().ok()).unwrap_or(0);
                Response::new(Full::new(Bytes::from(vec![b'x'; n])).boxed())
            }
            "/ws" if req.headers().contains_key("upgrade") => {
                let upgrade = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    let Ok(upgraded) = upgrade.await else { return };
                    let mut io = TokioIo::new(upgraded);
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
                Response::builder()
                    .status(StatusCode::SWITCHING_PROTOCOLS)
                    .header("connection", "upgrade")
                    .header("upgrade", "websocket")
                    .body(Full::new(Bytes::new()).boxed())
                    .unwrap()
            }
            _ => {
                let body = match req.into_body().collect().await {
                    Ok(collected) => {
                        if let Some(trailers) = collected.trailers() {
                            self.trailers.lock().unwrap().extend(
                                trailers
                                    .iter()
                                    .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())),
                            );
                        }
                        collected.to_bytes().len()
                    }
                    Err(_) => usize::MAX,
                };
                let json = serde_json::json!({ "method": seen.method, "uri": seen.uri, "body_len": body,
                    "caller": seen.header("x-spiffe-caller-id") });
                Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(json.to_string())).boxed())
                    .unwrap()
            }
        };
        Ok(response)
    }
}

fn text(s: &'static str) -> Response<Body> {
    Response::new(Full::new(Bytes::from_static(s.as_bytes())).boxed())
}

/// An app that switches protocols whenever asked (as Hypercorn does for
/// `h2c`), or on every request with `always`, then answers every chunk it
/// reads through the "tunnel". It records each request head it parsed.
pub struct SwitchingApp {
    pub addr: SocketAddr,
    pub heads: Mutex<Vec<String>>,
}

impl SwitchingApp {
    pub async fn start(always: bool) -> Arc<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = Arc::new(Self { addr: listener.local_addr().unwrap(), heads: Mutex::new(Vec::new()) });
        let serving = app.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                tokio::spawn(serving.clone().connection(tcp, always));
            }
        });
        app
    }

    async fn connection(self: Arc<Self>, mut tcp: tokio::net::TcpStream, always: bool) {
        loop {
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                if tcp.read(&mut byte).await.unwrap_or(0) == 0 {
                    return;
                }
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
            self.heads.lock().unwrap().push(head.clone());
            let upgrade = head.lines().find_map(|l| l.strip_prefix("upgrade:")).map(|v| v.trim().to_owned());
            if upgrade.is_some() || always {
                let token = upgrade.unwrap_or_else(|| "h2c".into());
                let reply =
                    format!("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {token}\r\n\r\n");
                if tcp.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                while let Ok(n) = tcp.read(&mut buf).await {
                    let answer = format!("tunnel saw {n} bytes: {}", String::from_utf8_lossy(&buf[..n]));
                    if n == 0 || tcp.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
                return;
            }
            let body = "ordinary";
            let reply = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            if tcp.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}
