//! The load generator over a fixed number of connections (HTTP/1.1
//! keep-alive, HTTP/2 with several streams each, or a new connection per
//! request to measure the handshake), for a fixed duration or request count.
//!
//! Closed loop (max throughput): each worker sends its next request when the
//! previous response is read. Open loop (`rate`): each worker has a schedule
//! of intended send times and latency is measured from the *intended* time,
//! so a stalled server is charged for the requests it delayed (no coordinated
//! omission). Latencies go into an HDR histogram in microseconds. Failures are
//! counted, never fatal: a failed connection is re-opened. What the servers
//! agreed to (ALPN, HTTP version) is recorded from the real connections.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};

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
    /// HTTP/2: this many concurrent streams per connection (`None` = HTTP/1.1).
    pub h2_streams: Option<usize>,
    /// Open loop at this many requests/s in total (`None` = closed loop).
    pub rate: Option<f64>,
}

impl Shape {
    fn workers(&self) -> usize {
        self.connections.max(1) * self.h2_streams.unwrap_or(1).max(1)
    }
}

/// The request a scenario sends: the same Bearer token on every request.
#[derive(Clone)]
pub struct RequestSpec {
    pub host: &'static str,
    pub path: &'static str,
    pub bearer: Arc<str>,
    /// The status a request of this scenario must get to count (not an error).
    pub expect: hyper::StatusCode,
    /// `Some`: a path scan, each request's path `path` followed by the next
    /// number of this counter (shared by the scenario's workers), so no two
    /// requests ask the same question.
    pub scan: Option<Arc<AtomicU64>>,
}

impl RequestSpec {
    /// The same path on every request, which must get a 200.
    pub fn allowed(host: &'static str, path: &'static str, bearer: Arc<str>) -> Self {
        Self { host, path, bearer, expect: hyper::StatusCode::OK, scan: None }
    }

    /// `path` followed by a new number on every request, which must get `expect`.
    pub fn scan(&self, path: &'static str, expect: hyper::StatusCode) -> Self {
        Self { path, expect, scan: Some(Arc::default()), ..self.clone() }
    }

    fn next_path(&self) -> Cow<'static, str> {
        match &self.scan {
            Some(next) => Cow::Owned(format!("{}{}", self.path, next.fetch_add(1, Ordering::Relaxed))),
            None => Cow::Borrowed(self.path),
        }
    }
}

pub struct Run {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Microseconds.
    pub latency: Histogram<u64>,
    pub protocols: Protocols,
}

/// What the servers agreed to on a run's connections, as negotiated (not as asked).
#[derive(Debug, Default, Clone)]
pub struct Protocols {
    /// The ALPN protocols the servers selected in the TLS handshakes (`none`
    /// when one selected none); empty for plain-text targets.
    pub alpn: BTreeSet<String>,
    /// The HTTP versions of the 200 responses.
    pub http: BTreeSet<hyper::Version>,
}

impl Protocols {
    pub fn extend(&mut self, other: Self) {
        self.alpn.extend(other.alpn);
        self.http.extend(other.http);
    }
}

impl Run {
    /// Adds `other`'s requests, errors, time, latencies and protocols to this run.
    pub fn merge(&mut self, other: Self) -> anyhow::Result<()> {
        self.requests += other.requests;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        self.latency.add(other.latency)?;
        self.protocols.extend(other.protocols);
        Ok(())
    }

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
    let workers = shape.workers();
    let streams = shape.h2_streams.unwrap_or(1).max(1);
    let target = &alpn(target, shape.h2_streams.is_some());
    // Open loop: each worker sends every `interval`, together `rate` per second.
    let interval = shape.rate.map(|rate| Duration::from_secs_f64(workers as f64 / rate.max(1.0)));
    let mut tasks = Vec::new();
    let mut protocols = Protocols::default();
    for connection in 0..shape.connections.max(1) {
        // HTTP/2 workers of one connection share it; HTTP/1.1 workers own theirs.
        let shared = match shape.h2_streams {
            Some(_) => match connect(target, true, &mut protocols).await {
                Ok(Sender::H2(sender)) => Some(sender),
                _ => None,
            },
            None => None,
        };
        for stream in 0..streams {
            let (target, request, budget) = (target.clone(), request.clone(), budget.clone());
            let latency = Histogram::new_from(&template);
            let sender = shared.clone().map(Sender::H2);
            // Spread the workers' schedules over one interval.
            let offset = interval.map(|i| i.mul_f64((connection * streams + stream) as f64 / workers as f64));
            let schedule = interval.zip(offset).map(|(i, o)| (started + o, i));
            tasks.push(tokio::spawn(async move {
                let worker = Worker { target: &target, request: &request, shape, deadline, budget: &budget };
                worker.run(sender, schedule, latency).await
            }));
        }
    }
    let mut run = Run { requests: 0, errors: 0, elapsed: Duration::ZERO, latency: template, protocols };
    for task in tasks {
        if let Ok((requests, errors, latency, protocols)) = task.await {
            run.requests += requests;
            run.errors += errors;
            let _ = run.latency.add(latency);
            run.protocols.extend(protocols);
        }
    }
    run.elapsed = started.elapsed();
    Ok(run)
}

struct Worker<'a> {
    target: &'a Target,
    request: &'a RequestSpec,
    shape: Shape,
    deadline: Instant,
    budget: &'a AtomicU64,
}

impl Worker<'_> {
    /// Sends until the deadline or the request budget; `schedule` = (first
    /// intended send time, interval) in open loop.
    async fn run(
        &self,
        mut sender: Option<Sender>,
        mut schedule: Option<(Instant, Duration)>,
        mut latency: Histogram<u64>,
    ) -> (u64, u64, Histogram<u64>, Protocols) {
        let (mut requests, mut errors) = (0, 0);
        let mut protocols = Protocols::default();
        let h2 = self.shape.h2_streams.is_some();
        while Instant::now() < self.deadline && take(self.budget) {
            let t = match &mut schedule {
                Some((next, interval)) => {
                    let intended = *next;
                    *next += *interval;
                    wait_until(intended).await;
                    intended
                }
                None => Instant::now(),
            };
            if sender.is_none() || self.shape.new_connection_per_request {
                sender = connect(self.target, h2, &mut protocols).await.ok();
            }
            let version = match sender.as_mut() {
                Some(s) => s.send(self.request).await,
                None => None,
            };
            if let Some(version) = version {
                protocols.http.insert(version);
                requests += 1;
                let _ = latency.record(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
            } else {
                errors += 1;
                sender = None;
            }
        }
        (requests, errors, latency, protocols)
    }
}

/// Tokio timers have millisecond resolution, which would add up to 1 ms
/// to every open-loop latency: sleep to just before `t`, then yield until it.
async fn wait_until(t: Instant) {
    const TIMER_SLACK: Duration = Duration::from_micros(1500);
    if let Some(early) = t.checked_sub(TIMER_SLACK)
        && early > Instant::now()
    {
        tokio::time::sleep_until(early.into()).await;
    }
    while Instant::now() < t {
        tokio::task::yield_now().await;
    }
}

fn take(budget: &AtomicU64) -> bool {
    budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok()
}

enum Sender {
    H1(http1::SendRequest<Empty<bytes::Bytes>>),
    H2(http2::SendRequest<Empty<bytes::Bytes>>),
}

impl Sender {
    /// The response's HTTP version when its status was the one expected.
    async fn send(&mut self, spec: &RequestSpec) -> Option<hyper::Version> {
        self.status(spec).await.filter(|(status, _)| *status == spec.expect).map(|(_, version)| version)
    }

    /// The response status and HTTP version (body read); an empty `bearer`
    /// sends no `Authorization`.
    async fn status(&mut self, spec: &RequestSpec) -> Option<(hyper::StatusCode, hyper::Version)> {
        let mut request = hyper::Request::get(spec.next_path().as_ref()).header("host", spec.host);
        if !spec.bearer.is_empty() {
            request = request.header("authorization", format!("Bearer {}", spec.bearer));
        }
        let request = request.body(Empty::new()).ok()?;
        let response = match self {
            Self::H1(s) => match s.ready().await {
                Ok(()) => s.send_request(request).await,
                Err(e) => Err(e),
            },
            Self::H2(s) => match s.ready().await {
                Ok(()) => s.send_request(request).await,
                Err(e) => Err(e),
            },
        };
        let response = response.ok()?;
        let (status, version) = (response.status(), response.version());
        response.into_body().collect().await.ok()?;
        Some((status, version))
    }
}

/// One request's status: checks that a target enforces what it claims to.
pub async fn probe(target: &Target, spec: &RequestSpec) -> Option<hyper::StatusCode> {
    let target = alpn(target, false);
    let mut protocols = Protocols::default();
    connect(&target, false, &mut protocols).await.ok()?.status(spec).await.map(|(status, _)| status)
}

/// `n` connections to `target`, each with one request answered (so each is
/// an established keep-alive HTTP/1.1 connection), held open until dropped:
/// the idle connections of `--idle`. `Err` if any fails.
pub async fn open_idle(target: &Target, spec: &RequestSpec, n: usize) -> anyhow::Result<Vec<Idle>> {
    let target = alpn(target, false);
    let mut protocols = Protocols::default();
    let mut idle = Vec::with_capacity(n);
    for _ in 0..n {
        let mut sender = connect(&target, false, &mut protocols).await?;
        let status = sender.status(spec).await.map(|(status, _)| status);
        anyhow::ensure!(status == Some(spec.expect), "an idle connection's request got {status:?}");
        idle.push(Idle { _sender: sender });
    }
    Ok(idle)
}

/// An open connection nobody sends on (dropping it closes it).
pub struct Idle {
    _sender: Sender,
}

/// The target with the ALPN protocol of the run (`h2` or `http/1.1`).
fn alpn(target: &Target, h2: bool) -> Target {
    match target {
        Target::Plain(addr) => Target::Plain(*addr),
        Target::Mtls(addr, tls) => {
            let mut tls = (**tls).clone();
            tls.alpn_protocols = vec![if h2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
            Target::Mtls(*addr, Arc::new(tls))
        }
    }
}

/// A connection speaking HTTP/2 (`h2`) or HTTP/1.1; the ALPN protocol the
/// server selected goes into `protocols`.
async fn connect(target: &Target, h2: bool, protocols: &mut Protocols) -> anyhow::Result<Sender> {
    let addr = match target {
        Target::Plain(addr) | Target::Mtls(addr, _) => *addr,
    };
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    match target {
        Target::Plain(_) => handshake(TokioIo::new(tcp), h2).await,
        Target::Mtls(_, tls) => {
            let name = rustls::pki_types::ServerName::try_from("backend")?;
            let stream = tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp).await?;
            let alpn = stream.get_ref().1.alpn_protocol().map_or(Cow::Borrowed("none"), String::from_utf8_lossy);
            if !protocols.alpn.contains(alpn.as_ref()) {
                protocols.alpn.insert(alpn.into_owned());
            }
            handshake(TokioIo::new(stream), h2).await
        }
    }
}

async fn handshake<I>(io: I, h2: bool) -> anyhow::Result<Sender>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    if h2 {
        let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        Ok(Sender::H2(sender))
    } else {
        let (sender, conn) = http1::handshake(io).await?;
        tokio::spawn(conn);
        Ok(Sender::H1(sender))
    }
}
