//! The load generator: closed loop over a fixed number of connections
//! (HTTP/1.1 keep-alive, or a new connection per request to measure the
//! handshake), for a fixed duration or request count. Latencies go into an
//! HDR histogram in microseconds. Failures are counted, never fatal: a
//! failed connection is re-opened.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// Where requests go.
#[derive(Clone)]
pub enum Target {
    Plain(SocketAddr),
    Mtls(SocketAddr, Arc<rustls::ClientConfig>),
}

/// How much load, and how it ends.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub connections: usize,
    pub duration: Duration,
    /// Stop after this many requests (whichever comes first).
    pub max_requests: Option<u64>,
    pub new_connection_per_request: bool,
}

/// The request every scenario sends: same path, same Bearer token.
#[derive(Clone)]
pub struct RequestSpec {
    pub host: &'static str,
    pub path: &'static str,
    pub bearer: Arc<str>,
}

pub struct Run {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Microseconds.
    pub latency: Histogram<u64>,
}

impl Run {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

pub async fn run(target: &Target, request: &RequestSpec, shape: Shape) -> anyhow::Result<Run> {
    // 1 us .. 60 s, 3 significant digits.
    let template = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let started = Instant::now();
    let deadline = started + shape.duration;
    let budget = Arc::new(AtomicU64::new(shape.max_requests.unwrap_or(u64::MAX)));
    let mut tasks = Vec::new();
    for _ in 0..shape.connections.max(1) {
        let (target, request, budget) = (target.clone(), request.clone(), budget.clone());
        let latency = Histogram::new_from(&template);
        tasks.push(tokio::spawn(async move { connection(&target, &request, shape, deadline, &budget, latency).await }));
    }
    let mut run = Run { requests: 0, errors: 0, elapsed: Duration::ZERO, latency: template };
    for task in tasks {
        if let Ok((requests, errors, latency)) = task.await {
            run.requests += requests;
            run.errors += errors;
            let _ = run.latency.add(latency);
        }
    }
    run.elapsed = started.elapsed();
    Ok(run)
}

/// One connection's closed loop: the next request leaves when the previous
/// response has been read.
async fn connection(
    target: &Target,
    request: &RequestSpec,
    shape: Shape,
    deadline: Instant,
    budget: &AtomicU64,
    mut latency: Histogram<u64>,
) -> (u64, u64, Histogram<u64>) {
    let (mut requests, mut errors) = (0, 0);
    let mut sender: Option<SendRequest<Empty<bytes::Bytes>>> = None;
    while Instant::now() < deadline && take(budget) {
        let t = Instant::now();
        if sender.is_none() || shape.new_connection_per_request {
            sender = connect(target).await.ok();
        }
        let ok = match sender.as_mut() {
            Some(s) => send(s, request).await,
            None => false,
        };
        if ok {
            requests += 1;
            let _ = latency.record(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
        } else {
            errors += 1;
            sender = None;
        }
    }
    (requests, errors, latency)
}

fn take(budget: &AtomicU64) -> bool {
    budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok()
}

async fn send(sender: &mut SendRequest<Empty<bytes::Bytes>>, spec: &RequestSpec) -> bool {
    if sender.ready().await.is_err() {
        return false;
    }
    let Ok(request) = hyper::Request::get(spec.path)
        .header("host", spec.host)
        .header("authorization", format!("Bearer {}", spec.bearer))
        .body(Empty::new())
    else {
        return false;
    };
    match sender.send_request(request).await {
        Ok(response) => {
            let ok = response.status() == hyper::StatusCode::OK;
            response.into_body().collect().await.is_ok() && ok
        }
        Err(_) => false,
    }
}

async fn connect(target: &Target) -> anyhow::Result<SendRequest<Empty<bytes::Bytes>>> {
    let addr = match target {
        Target::Plain(addr) | Target::Mtls(addr, _) => *addr,
    };
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    match target {
        Target::Plain(_) => handshake(TokioIo::new(tcp)).await,
        Target::Mtls(_, tls) => {
            let name = rustls::pki_types::ServerName::try_from("backend")?;
            let stream = tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp).await?;
            handshake(TokioIo::new(stream)).await
        }
    }
}

async fn handshake<I>(io: I) -> anyhow::Result<SendRequest<Empty<bytes::Bytes>>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    Ok(sender)
}
