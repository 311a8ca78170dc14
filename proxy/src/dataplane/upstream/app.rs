//! The local app behind the inbound listener: HTTP/1.1 over plain TCP, one
//! destination, connections kept in a LIFO pool.
//!
//! hyper-util's general client cost ~4% of a sidecar's CPU per request
//! here (bench/README.md): a task spawned per response to wait until the
//! connection is ready again, a pool keyed and hashed by destination, an
//! extension map per response. With one destination none of that is
//! needed: a connection goes back to the pool when its response body has
//! been read to the end (never earlier, so a long stream never holds up
//! another request), and a request a reused connection never sent (the app
//! closed it meanwhile) is sent again on another.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{self, HeaderValue};
use hyper::http::uri::Authority;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use policy::Reason;
use tokio::net::TcpStream;

use crate::dataplane::body::Body;

/// The local app's client. Cheap to clone (one shared pool).
#[derive(Debug, Clone)]
pub struct AppClient {
    pool: Arc<Pool>,
}

#[derive(Debug)]
struct Pool {
    /// `host:port` to connect to.
    addr: String,
    /// The app's `Host`, built once.
    host: Option<HeaderValue>,
    connect_timeout: Duration,
    response_timeout: Duration,
    /// Idle connections are closed after this long (to half as long again)...
    idle_timeout: Duration,
    /// ...and beyond this many (a burst's connections do not all stay open).
    max_idle: usize,
    /// Most recently returned last.
    idle: Mutex<Vec<Idle>>,
    /// Whether the task that closes expired idle connections runs.
    reaping: AtomicBool,
    /// Advanced by that task every half idle timeout: an idle connection's
    /// age in ticks, with no clock read per request.
    tick: AtomicU64,
}

#[derive(Debug)]
struct Idle {
    sender: SendRequest<Body>,
    /// [`Pool::tick`] when it was returned.
    since: u64,
}

impl AppClient {
    pub fn new(upstream: &Authority, connect_timeout: Duration, response_timeout: Duration) -> Self {
        Self::with_idle_limits(upstream, connect_timeout, response_timeout, super::POOL_IDLE, MAX_IDLE)
    }

    fn with_idle_limits(
        upstream: &Authority,
        connect_timeout: Duration,
        response_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Self {
        let addr = format!("{}:{}", upstream.host(), upstream.port_u16().unwrap_or(80));
        let pool = Pool {
            addr,
            host: host_header(upstream),
            connect_timeout,
            response_timeout,
            idle_timeout,
            max_idle,
            idle: Mutex::new(Vec::new()),
            reaping: AtomicBool::new(false),
            tick: AtomicU64::new(0),
        };
        Self { pool: Arc::new(pool) }
    }

    /// Sends `request` to the app (its URI in origin-form, `/path?query`, as
    /// `forward::origin_form` builds it; the app's `Host`: a caller's never
    /// reaches the app) and waits for the response head at most
    /// `response_timeout`, connecting included.
    pub async fn send(&self, mut request: Request<Body>) -> Result<Response<AppBody>, Reason> {
        let pool = &self.pool;
        match &pool.host {
            Some(host) => request.headers_mut().insert(header::HOST, host.clone()),
            None => request.headers_mut().remove(header::HOST),
        };
        // Only origin-form goes on the wire: never an absolute URI (a
        // caller's authority), `*`, or anything else not starting with `/`.
        let uri = request.uri();
        if uri.scheme().is_some() || uri.authority().is_some() || !uri.path().starts_with('/') {
            return Err(Reason::BadPath);
        }
        // A connection is reused only once its request body has been sent
        // too: an app that answers early (before reading an upload) gets a
        // connection of its own for the next request, never one whose rest
        // of the upload it might read as a request.
        let upload = (!request.body().is_end_stream()).then(|| Arc::new(AtomicBool::new(false)));
        if let Some(sent) = &upload {
            request = request.map(|body| Upload { body, sent: sent.clone() }.boxed());
        }
        // CONNECT is refused before this; were it not, its tunnel is never the pool's.
        let connect = request.method() == hyper::Method::CONNECT;
        let exchange = self.exchange(request, Finish { upload, connect });
        match tokio::time::timeout(pool.response_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Reason::UpstreamTimeout),
        }
    }

    async fn exchange(&self, mut request: Request<Body>, finish: Finish) -> Result<Response<AppBody>, Reason> {
        // Idle connections first; each is tried once. A request one of them
        // never sent comes back and goes on the next (or a new one).
        while let Some(mut sender) = self.ready_idle() {
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(self.returned(sender, response, finish)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(failed(&e.into_error())),
                },
            }
        }
        let mut sender = self.connect().await?;
        match sender.send_request(request).await {
            Ok(response) => Ok(self.returned(sender, response, finish)),
            Err(e) => Err(failed(&e)),
        }
    }

    async fn connect(&self) -> Result<SendRequest<Body>, Reason> {
        let pool = &self.pool;
        let tcp = match tokio::time::timeout(pool.connect_timeout, TcpStream::connect(pool.addr.as_str())).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, addr = pool.addr, "app connect failed");
                return Err(Reason::UpstreamUnavailable);
            }
            Err(_) => {
                tracing::debug!(addr = pool.addr, "app connect timed out");
                return Err(Reason::UpstreamUnavailable);
            }
        };
        // Best effort: a socket without it only answers later.
        let _ = tcp.set_nodelay(true);
        let (sender, connection) = http1::Builder::new().handshake(TokioIo::new(tcp)).await.map_err(|e| {
            tracing::debug!(error = %e, "app connection failed");
            Reason::UpstreamUnavailable
        })?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "app connection ended");
            }
        });
        self.reap_idle();
        Ok(sender)
    }

    /// An idle connection ready for a request now. One still busy (its
    /// response was read, the request's body is still being sent) is left
    /// in the pool: nothing ever waits for another request's upload.
    fn ready_idle(&self) -> Option<SendRequest<Body>> {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut busy = Vec::new();
        let found = loop {
            // A connection returned a moment before its task noticed: rare,
            // and a few of them are all worth looking past.
            if busy.len() == MAX_BUSY_SKIPPED {
                break None;
            }
            let Some(mut idle) = self.pool.checkout() else { break None };
            match idle.sender.poll_ready(&mut cx) {
                Poll::Ready(Ok(())) => break Some(idle.sender),
                Poll::Ready(Err(_)) => {}
                Poll::Pending => busy.push(idle),
            }
        };
        if !busy.is_empty() {
            self.pool.idle.lock().unwrap_or_else(PoisonError::into_inner).extend(busy.into_iter().rev());
        }
        found
    }

    /// The response with its connection: back to the pool now if the body
    /// is already complete, else when it has been read to the end. A
    /// switched connection (`101`, a CONNECT tunnel) is the tunnel's, never
    /// the pool's.
    fn returned(&self, sender: SendRequest<Body>, response: Response<Incoming>, finish: Finish) -> Response<AppBody> {
        let keep = response.status() != StatusCode::SWITCHING_PROTOCOLS && !finish.connect;
        let pool = Arc::downgrade(&self.pool);
        response.map(|body| {
            let mut body = AppBody { body, back: keep.then_some(Back { sender, pool, upload: finish.upload }) };
            if body.body.is_end_stream() {
                body.finished();
            }
            body
        })
    }

    /// Starts, once, the task that closes connections idle longer than
    /// the idle timeout (checked every half of it); it ends with the client.
    fn reap_idle(&self) {
        if self.pool.reaping.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool = Arc::downgrade(&self.pool);
        let every = self.pool.idle_timeout / 2;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = pool.upgrade() else { return };
                pool.expire(pool.tick.fetch_add(1, Ordering::Relaxed) + 1);
            }
        });
    }
}

impl Pool {
    /// The most recently returned idle connection that is still open (the
    /// closed ones met on the way are dropped).
    fn checkout(&self) -> Option<Idle> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(i) = idle.pop() {
            if !i.sender.is_closed() {
                return Some(i);
            }
        }
        None
    }

    fn put(&self, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.max_idle {
            idle.push(Idle { sender, since: self.tick.load(Ordering::Relaxed) });
        }
        // Else dropped here, which closes it.
    }

    /// At tick `now`, drops (so closes) the connections returned three
    /// ticks ago or more: idle for one to one and a half idle timeouts.
    fn expire(&self, now: u64) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.retain(|i| now.saturating_sub(i.since) < 3 && !i.sender.is_closed());
    }
}

/// A failed exchange on a connection: the app went away or answered
/// something that is no HTTP/1.1 response.
fn failed(e: &hyper::Error) -> Reason {
    tracing::debug!(error = %super::DisplayChain(e), "app request failed");
    Reason::UpstreamError
}

/// `Host` for an `http` authority, as hyper-util's client writes it from
/// the URI: the host, and the port unless it is 80.
fn host_header(authority: &Authority) -> Option<HeaderValue> {
    let host = match authority.port_u16() {
        Some(port) if port != 80 => format!("{}:{port}", authority.host()),
        _ => authority.host().to_owned(),
    };
    HeaderValue::from_str(&host).ok()
}

/// Idle connections kept at most (nginx's `keepalive` for an upstream;
/// hyper-util's client kept any number).
const MAX_IDLE: usize = 1024;

/// Idle connections found busy that one request looks past before it
/// opens a connection of its own.
const MAX_BUSY_SKIPPED: usize = 4;

/// What decides, at the response's end, whether its connection is reused.
#[derive(Debug)]
struct Finish {
    /// Set once the request's body has been sent (none: it had none).
    upload: Option<Arc<AtomicBool>>,
    connect: bool,
}

#[derive(Debug)]
struct Back {
    sender: SendRequest<Body>,
    pool: Weak<Pool>,
    upload: Option<Arc<AtomicBool>>,
}

/// The app's response body. Read to its end (its request's body sent
/// too), it puts its connection back in the pool; dropped before that,
/// the connection is closed with it.
#[derive(Debug)]
pub struct AppBody {
    body: Incoming,
    back: Option<Back>,
}

impl AppBody {
    fn finished(&mut self) {
        let Some(Back { sender, pool, upload }) = self.back.take() else { return };
        if upload.is_some_and(|sent| !sent.load(Ordering::Acquire)) {
            // The app answered before the upload ended: the connection closes after it.
            return;
        }
        if let Some(pool) = pool.upgrade() {
            pool.put(sender);
        }
    }
}

/// A request body that says when it has been sent to its end.
struct Upload {
    body: Body,
    sent: Arc<AtomicBool>,
}

impl HttpBody for Upload {
    type Data = Bytes;
    type Error = crate::dataplane::body::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        if frame.is_none() || self.body.is_end_stream() {
            self.sent.store(true, Ordering::Release);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl HttpBody for AppBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        match &frame {
            None => self.finished(),
            // Trailers are the last frame: a server writing them polls no further.
            Some(Ok(f)) if f.is_trailers() || self.body.is_end_stream() => self.finished(),
            // An error: the connection is not reused.
            Some(Err(_)) => self.back = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests;
