//! The admin API (`/mgmt`, DESIGN 1.5): route names and JSON shapes of the
//! reference prototype, a key required (the app shares the pod's loopback;
//! mTLS in addition off loopback) unless the mTLS caller's SVID has a role
//! of its own (`mgmt.tls.roles`), every mutation persisted before its 200
//! and audited with the key's name, the SVID, or, for a configured console,
//! the person it acts for.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use certs::tls::Resumption;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::{MgmtSection, Role};
use crate::dataplane::body::{self, Body};
use crate::dataplane::server::{self, Listener, Slot};

mod auth;
pub mod authzen;
pub mod explain;
pub mod reload;
pub mod restore;
mod routes;
pub mod state;
mod stream;

pub use routes::Context;

/// `PUT /mgmt/policy` bodies are at most this large.
pub const MAX_POLICY_BYTES: usize = 256 * 1024;
/// The TLS handshake (mTLS off loopback) must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// The header that carries an admin key.
const ADMIN_KEY: &str = "x-spiffe-admin-key";

pub struct Mgmt {
    auth: auth::Auth,
    tls: Option<TlsAcceptor>,
    /// `mgmt.tls.roles` and `mgmt.tls.consoles`.
    svid_roles: Vec<(certs::IdPattern, Role)>,
    consoles: Vec<certs::IdPattern>,
    /// `mgmt.tls.loopback_plain`.
    plain_too: bool,
    ctx: Context,
}

/// The headers a console names the signed-in person with.
const X_A2A_ACTOR: &str = "x-a2a-actor";
const X_A2A_ACTOR_ROLE: &str = "x-a2a-actor-role";

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
                let mut config =
                    certs::tls::server_config(ctx.identity.clone(), Arc::new(authorizer), Resumption::Off)?;
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                Some(TlsAcceptor::from(Arc::new(config)))
            }
            None => None,
        };
        let auth = auth::Auth::new(ctx.reloader.keys.clone(), ctx.metrics.clone());
        let (svid_roles, consoles) = (section.tls_roles.clone(), section.tls_consoles.clone());
        Ok(Arc::new(Self { auth, tls, svid_roles, consoles, plain_too: section.loopback_plain, ctx }))
    }

    /// Serves `listener` until `shutdown`, then drains for at most `drain`.
    pub async fn serve(self: Arc<Self>, listener: Listener, shutdown: watch::Receiver<bool>, drain: Duration) {
        self.serve_as(listener, shutdown, drain, None).await;
    }

    /// The AuthZEN PDP (`authzen.listen`), protected like `/mgmt`: the same
    /// transport (mTLS with `mgmt.tls.allowed_callers` when set), the same
    /// keys and failure throttling; any role may ask.
    pub async fn serve_authzen(
        self: Arc<Self>,
        listener: Listener,
        shutdown: watch::Receiver<bool>,
        drain: Duration,
        pdp: Arc<authzen::Service>,
    ) {
        self.serve_as(listener, shutdown, drain, Some(pdp)).await;
    }

    async fn serve_as(
        self: Arc<Self>,
        listener: Listener,
        shutdown: watch::Receiver<bool>,
        drain: Duration,
        pdp: Option<Arc<authzen::Service>>,
    ) {
        server::accept_loop(listener, shutdown, drain, move |tcp, remote, slot, shutdown| {
            let this = self.clone();
            let pdp = pdp.clone();
            async move {
                // `loopback_plain`: a TLS client starts with a handshake record (0x16); anything else is plain HTTP.
                let plain = this.plain_too && {
                    let mut first = [0u8; 1];
                    let peeked = tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await;
                    !matches!(peeked, Ok(Ok(1)) if first[0] == 0x16)
                };
                match this.tls.clone().filter(|_| !plain) {
                    None => this.serve_connection(tcp, remote, None, slot, shutdown, pdp).await,
                    Some(acceptor) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            // The verifier accepted a parsable SVID leaf that the allow-list matches.
                            let leaf = tls.get_ref().1.peer_certificates().and_then(|chain| chain.first());
                            let peer = leaf.and_then(|der| certs::x509::parse_leaf(der).ok()).map(|l| Arc::new(l.id));
                            this.serve_connection(tls, remote, peer, slot, shutdown, pdp).await
                        }
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
        peer: Option<Arc<certs::SpiffeId>>,
        slot: Slot,
        shutdown: watch::Receiver<bool>,
        pdp: Option<Arc<authzen::Service>>,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // Cancelled to close the connection from a handler (a stalled audit stream).
        let cut = CancellationToken::new();
        let handler_cut = cut.clone();
        let handle = move |req| {
            let (this, peer, cut, pdp) = (self.clone(), peer.clone(), handler_cut.clone(), pdp.clone());
            async move {
                match pdp {
                    Some(pdp) => this.handle_authzen(req, remote, peer, &pdp).await,
                    None => this.handle(req, remote, peer, cut).await,
                }
            }
        };
        server::http1_connection(io, slot, crate::config::LOCAL_LIMITS, shutdown, Some(cut), handle).await;
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        remote: SocketAddr,
        peer: Option<Arc<certs::SpiffeId>>,
        connection: CancellationToken,
    ) -> Response<Body> {
        let (caller, mut response) = self.route(req, remote, peer.as_deref(), connection).await;
        // A connection that has not shown a key is not kept: whatever shares
        // the loopback cannot hold every slot with keep-alive health checks.
        if caller.is_none() {
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }

    /// An AuthZEN request: 404 / 405 first (as `/mgmt`), then a key or an
    /// SVID with a role (any role), then the PDP.
    async fn handle_authzen(
        self: Arc<Self>,
        req: Request<Incoming>,
        remote: SocketAddr,
        peer: Option<Arc<certs::SpiffeId>>,
        pdp: &authzen::Service,
    ) -> Response<Body> {
        let Some(route) = authzen::Route::find(req.uri().path()) else {
            return error(StatusCode::NOT_FOUND, "not_found");
        };
        if req.method() != route.method() {
            let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
            response.headers_mut().insert(header::ALLOW, route.allow());
            return response;
        }
        // AuthZEN clients send credentials as `Authorization: Bearer`: the
        // same keys. A bearer is a key only where one is needed: an SVID with
        // a role (`mgmt.tls.roles`) stands on its own, whatever token it also
        // sends (a PEP's IdP token is not a wrong key).
        let svid_role = peer.as_deref().and_then(|p| self.svid_role(p)).is_some();
        let bearer = req.headers().get(header::AUTHORIZATION).and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        let bearer = bearer.filter(|_| !svid_role).and_then(|key| HeaderValue::from_bytes(key).ok());
        let key = req.headers().get(ADMIN_KEY).or(bearer.as_ref());
        match self.authenticate(key, req.headers(), remote, peer.as_deref(), false) {
            Ok(_) => pdp.handle(route, req).await,
            Err(reject) => {
                let mut response = reject.into_response();
                // As for /mgmt: a connection that has not shown a key is not kept.
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                response
            }
        }
    }

    /// The response, and who asked for it (if they showed a valid key or SVID).
    async fn route(
        &self,
        req: Request<Incoming>,
        remote: SocketAddr,
        peer: Option<&certs::SpiffeId>,
        connection: CancellationToken,
    ) -> (Option<Caller>, Response<Body>) {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        let Some(route) = routes::Route::find(&path) else {
            return (None, error(StatusCode::NOT_FOUND, "not_found"));
        };
        if !route.methods().contains(&method) {
            let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
            let allow = route.methods().iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
            if let Ok(v) = HeaderValue::from_str(&allow) {
                response.headers_mut().insert(header::ALLOW, v);
            }
            return (None, response);
        }
        let caller = if route.open() {
            None
        } else {
            match self.authenticate(req.headers().get(ADMIN_KEY), req.headers(), remote, peer, method != Method::GET) {
                Ok(caller) => Some(caller),
                Err(reject) => return (None, reject.into_response()),
            }
        };
        let write = method != Method::GET;
        if write && caller.as_ref().is_some_and(|c| c.role != Role::Admin) {
            return (caller, error(StatusCode::FORBIDDEN, "forbidden"));
        }
        let response = routes::dispatch(&self.ctx, route, req, caller.clone(), connection).await;
        (caller, response)
    }

    /// Who is calling: the key presented, or without one, an SVID with a
    /// role (`mgmt.tls.roles`); and when that caller is a configured console
    /// naming a person (`X-A2A-Actor`), that person, with the lower of the
    /// console's role and the one it says the person has (`X-A2A-Actor-Role`).
    /// `key`: the admin key presented (`X-Spiffe-Admin-Key`, or on the PDP
    /// listener a bearer).
    fn authenticate(
        &self,
        key: Option<&HeaderValue>,
        headers: &hyper::HeaderMap,
        remote: SocketAddr,
        peer: Option<&certs::SpiffeId>,
        write: bool,
    ) -> Result<Caller, Reject> {
        let caller = match (key, peer.and_then(|p| self.svid_role(p).map(|role| (p, role)))) {
            (None, Some((peer, role))) => Caller { name: peer.to_string(), role },
            _ => self.auth.check(key, remote.ip())?,
        };
        let bad = |what: &str| Reject::with(StatusCode::BAD_REQUEST, "invalid_request", what.to_owned());
        let Some(console) = peer.filter(|p| self.consoles.iter().any(|c| c.matches(p))) else { return Ok(caller) };
        let Some(actor) = headers.get(X_A2A_ACTOR) else {
            // A console acts for people: a write of its own would be nobody's (a
            // console bug dropping the person must not write with the console's role).
            if headers.contains_key(X_A2A_ACTOR_ROLE) || write {
                return Err(bad("a console names the person it acts for: X-A2A-Actor with X-A2A-Actor-Role"));
            }
            return Ok(caller);
        };
        let person = actor_name(actor).ok_or_else(|| bad("X-A2A-Actor: 1 to 128 printable characters"))?;
        let role = headers.get(X_A2A_ACTOR_ROLE).and_then(|v| v.to_str().ok()).and_then(Role::parse);
        let role = role.ok_or_else(|| bad("X-A2A-Actor-Role: admin or viewer, with X-A2A-Actor"))?;
        Ok(Caller { name: format!("{person} (via {console})"), role: caller.role.min(role) })
    }

    /// The role `mgmt.tls.roles` gives `peer`: the least privileged of those that match.
    fn svid_role(&self, peer: &certs::SpiffeId) -> Option<Role> {
        self.svid_roles.iter().filter(|(pattern, _)| pattern.matches(peer)).map(|(_, role)| *role).min()
    }
}

/// `GET /mgmt/explain`'s budget: 5 a second across callers, bursts of 20.
pub fn explain_budget() -> crate::dataplane::server::TokenBucket {
    crate::dataplane::server::TokenBucket::new(5.0, 20.0)
}

/// A person's name as a console sends it (UTF-8, at most 128 characters,
/// no control, format or separator characters: bidi overrides, zero-width
/// characters and line separators could make an audit line read as another
/// person's): it goes into audit events verbatim.
fn actor_name(value: &HeaderValue) -> Option<String> {
    let name = std::str::from_utf8(value.as_bytes()).ok()?.trim();
    let hidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{ad}' | '\u{61c}' | '\u{115f}' | '\u{1160}' | '\u{180e}' | '\u{feff}')
            || ('\u{200b}'..='\u{200f}').contains(&c)
            || ('\u{2028}'..='\u{202e}').contains(&c)
            || ('\u{2060}'..='\u{206f}').contains(&c)
            || ('\u{fff9}'..='\u{fffb}').contains(&c)
    };
    let fits = !name.is_empty() && name.chars().count() <= 128 && !name.chars().any(hidden);
    fits.then(|| name.to_owned())
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
