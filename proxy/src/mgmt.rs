//! The admin API (`/mgmt`, DESIGN 1.5): route names and JSON shapes of the
//! reference prototype, keys always required (the app shares the pod's
//! loopback; mTLS in addition off loopback), every mutation persisted before its 200 and audited with the
//! key's name.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::body::{self, Body};
use crate::config::{AdminKey, MgmtSection, Role};

mod routes;
pub mod state;
mod stream;

pub use routes::Context;

/// An address's failures are forgotten after this long without one (and
/// when it presents a valid key).
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Failures before an address is slowed down.
const FREE_FAILURES: u32 = 10;
/// The first back-off; it doubles with each further failure up to the window.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_TRACKED_ADDRESSES: u64 = 4096;
/// `PUT /mgmt/policy` bodies are at most this large.
pub const MAX_POLICY_BYTES: usize = 256 * 1024;
/// Each request head must arrive within this.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The TLS handshake (mTLS off loopback) must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Mgmt {
    /// `mgmt.keys`: a reload replaces them.
    keys: Arc<arc_swap::ArcSwap<Vec<AdminKey>>>,
    failures: moka::sync::Cache<IpAddr, Arc<Mutex<Failures>>>,
    tls: Option<TlsAcceptor>,
    ctx: Context,
}

/// Failed key checks from one address.
#[derive(Debug, Default)]
struct Failures {
    count: u32,
    /// Further failures get 429 until then.
    slowed_until: Option<Instant>,
}

/// A refusal, turned into a JSON response at the edge.
#[derive(Debug)]
pub struct Reject {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: Option<String>,
    /// Seconds, for a 429.
    pub retry_after: Option<u64>,
}

impl Reject {
    pub fn new(status: StatusCode, code: &'static str) -> Self {
        Self { status, code, message: None, retry_after: None }
    }

    pub fn with(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: Some(message.into()), retry_after: None }
    }

    pub fn into_response(self) -> Response<Body> {
        let mut response = match self.message {
            Some(message) => error_message(self.status, self.code, &message),
            None => error(self.status, self.code),
        };
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Who is calling, once authenticated.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

impl Mgmt {
    /// With `mgmt.tls.allowed_callers` the listener is mTLS: the admin client
    /// presents an SVID from a trusted domain matching one of them, and a key.
    pub fn new(section: &MgmtSection, ctx: Context) -> Result<Arc<Self>, rustls::Error> {
        let tls = match &section.tls_callers {
            Some(patterns) => {
                let patterns = patterns.clone();
                let authorizer = move |peer: &certs::SpiffeId| patterns.iter().any(|p| p.matches(peer));
                let mut config = certs::tls::server_config(ctx.identity.clone(), Arc::new(authorizer))?;
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                Some(TlsAcceptor::from(Arc::new(config)))
            }
            None => None,
        };
        let failures =
            moka::sync::Cache::builder().max_capacity(MAX_TRACKED_ADDRESSES).time_to_idle(FAILURE_WINDOW).build();
        Ok(Arc::new(Self { keys: ctx.reloader.keys.clone(), failures, tls, ctx }))
    }

    pub async fn serve(
        self: Arc<Self>,
        listener: crate::server::Listener,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        crate::server::accept_loop(listener, shutdown, Duration::from_secs(5), move |tcp, remote, slot, shutdown| {
            let this = self.clone();
            async move {
                match this.tls.clone() {
                    None => this.serve_connection(tcp, remote, slot, shutdown).await,
                    Some(acceptor) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => this.serve_connection(tls, remote, slot, shutdown).await,
                        Ok(Err(e)) => tracing::debug!(%remote, error = %e, "mgmt: TLS handshake refused"),
                        Err(_) => tracing::debug!(%remote, "mgmt: TLS handshake timed out"),
                    },
                }
            }
        })
        .await;
    }

    async fn serve_connection<I>(
        self: Arc<Self>,
        io: I,
        remote: SocketAddr,
        slot: crate::server::Slot,
        mut shutdown: watch::Receiver<bool>,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // Cancelled to close the connection from a handler (a stalled audit stream).
        let cut = CancellationToken::new();
        let handler_cut = cut.clone();
        let service = hyper::service::service_fn(move |req| self.clone().handle(req, remote, handler_cut.clone()));
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEAD_TIMEOUT)
            .serve_connection(hyper_util::rt::TokioIo::new(crate::server::Lingering::new(io, Some(slot))), service);
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = shutdown.wait_for(|s| *s) => {}
            () = cut.cancelled() => {}
        }
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        remote: SocketAddr,
        connection: CancellationToken,
    ) -> Result<Response<Body>, Infallible> {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        let Some(route) = routes::Route::find(&path) else {
            return Ok(error(StatusCode::NOT_FOUND, "not_found"));
        };
        if !route.methods().contains(&method) {
            let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
            let allow = route.methods().iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
            if let Ok(v) = HeaderValue::from_str(&allow) {
                response.headers_mut().insert(header::ALLOW, v);
            }
            return Ok(response);
        }
        let caller = if route.open() {
            None
        } else {
            match self.authenticate(&req, remote.ip()) {
                Ok(caller) => Some(caller),
                Err(reject) => return Ok(reject.into_response()),
            }
        };
        let write = method != Method::GET;
        if write && caller.as_ref().is_some_and(|c| c.role != Role::Admin) {
            return Ok(error(StatusCode::FORBIDDEN, "forbidden"));
        }
        Ok(routes::dispatch(&self.ctx, route, req, caller, connection).await)
    }

    /// The key, compared in constant time over SHA-256 hashes. A valid key
    /// always passes (the local app must not be able to lock the operator
    /// out by failing on purpose); only failed attempts are slowed: after
    /// [`FREE_FAILURES`] from one address, each further one is answered 429
    /// for a back-off that doubles (1 s, 2 s, ... up to a minute).
    fn authenticate(&self, req: &Request<Incoming>, ip: IpAddr) -> Result<Caller, Reject> {
        let presented = req.headers().get("x-spiffe-admin-key").map(|v| crate::config::sha256(v.as_bytes()));
        let matched = presented.and_then(|hash| {
            // Every key is compared, so the time does not depend on which one matched.
            self.keys.load().iter().fold(None, |found, key| {
                let same = aws_lc_rs::constant_time::verify_slices_are_equal(&key.sha256, &hash).is_ok();
                if same { Some(Caller { name: key.name.clone(), role: key.role }) } else { found }
            })
        });
        if let Some(caller) = matched {
            self.failures.invalidate(&ip);
            return Ok(caller);
        }
        self.ctx.metrics.mgmt_auth_failure();
        let failures = self.failures.get_with(ip, Arc::default);
        let mut failures = failures.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if let Some(until) = failures.slowed_until.filter(|until| *until > now) {
            let wait = until.duration_since(now).as_secs_f64().ceil();
            let mut reject = Reject::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests");
            reject.retry_after = Some((wait as u64).max(1));
            return Err(reject);
        }
        failures.count = failures.count.saturating_add(1);
        if let Some(beyond) = failures.count.checked_sub(FREE_FAILURES) {
            let backoff = FIRST_BACKOFF.saturating_mul(1 << beyond.min(6)).min(FAILURE_WINDOW);
            failures.slowed_until = Some(now + backoff);
        }
        Err(Reject::new(StatusCode::UNAUTHORIZED, "unauthorized"))
    }
}

pub fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(body::full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

pub fn error(status: StatusCode, code: &str) -> Response<Body> {
    json_response(status, &json!({ "error": code }))
}

pub fn error_message(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json_response(status, &json!({ "error": code, "message": message }))
}

/// Reads a request body up to `limit` bytes; `None` when larger.
pub async fn read_body(req: Request<Incoming>, limit: usize) -> Option<Bytes> {
    let limited = http_body_util::Limited::new(req.into_body(), limit);
    limited.collect().await.ok().map(|b| b.to_bytes())
}
