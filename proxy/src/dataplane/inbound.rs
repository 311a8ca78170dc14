//! The inbound listener: mTLS from peer sidecars, Layer 1 at the handshake
//! and on every request, canonical paths, header hygiene, and forwarding to
//! the local app with bodies, SSE and upgrades streamed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use certs::IdentityWatch;
use certs::tls::Resumption;
use certs::x509::LeafInfo;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, Uri, Version};
use hyper_util::rt::TokioIo;
use policy::{CanonicalPath, PathOptions, Reason};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::changes::Changes;
use crate::config::{InboundConfig, PolicyMode};
use crate::dataplane::body::{self, Activity, Body, Cut, Tracked};
use crate::dataplane::connections::{Connections, Peer, StreamRequest};
use crate::dataplane::forward::{self, Exchange, ResponseId, Sent, Sink};
use crate::dataplane::headers::{
    self, X_FORWARDED_FOR, X_FORWARDED_PROTO, X_SPIFFE_CALLER_ID, X_SPIFFE_ENTRA_AGENT_ID, X_SPIFFE_TRUST_DOMAIN,
};
use crate::dataplane::refusals::{Refusal, Refusals};
use crate::dataplane::request_id::{Hop, RequestIds};
use crate::dataplane::server::{self, ConnectionEnds};
use crate::dataplane::upstream::{AppBody, AppClient, TunnelEnds};
use crate::layers::allowlist::{self, AllowList};
use crate::layers::governance::Governor;
use crate::layers::oauth::{self, Oauth};
use crate::layers::pipeline::{self, RequestFacts};
use crate::layers::rbac::PolicyStore;
use crate::observe::audit::{AuditHub, Direction, Event};
use crate::observe::metrics::Metrics;

mod recheck;

/// Connections are drained this long before the caller's certificate
/// expires, so its sidecar reconnects with a fresh SVID instead of hitting
/// `cert_expired`; at the expiry itself they are closed.
const EXPIRY_MARGIN: Duration = Duration::from_secs(1);

/// A response body of known length up to this size finishes without being
/// registered for re-checks; every other body is (see [`Inbound::send`]).
const SHORT_BODY: u64 = 1 << 20;

/// A body that may last: not already ended, and not known to be at most
/// [`SHORT_BODY`] bytes.
fn lasting(body: &impl http_body::Body) -> bool {
    !body.is_end_stream() && body.size_hint().exact().is_none_or(|n| n > SHORT_BODY)
}

/// Everything the inbound side shares across connections.
pub struct Inbound {
    config: InboundConfig,
    tls: TlsAcceptor,
    /// Ours: its bundles judge open connections again when they change.
    identity: IdentityWatch,
    /// "Decisions changed": open streams are judged again on each.
    changes: Changes,
    allowlist: Arc<AllowList>,
    connections: Arc<Connections>,
    app: AppClient,
    /// `config.upstream` for audit events, formatted once.
    target: Arc<str>,
    ids: RequestIds,
    metrics: Arc<Metrics>,
    layers: Layers,
    /// Refused handshakes, aggregated so a flood cannot evict the audit ring.
    refusals: Refusals,
}

/// The state layers 2-4 read on every request.
pub struct Layers {
    /// The policy and its mode (`policy.mode`), swapped together.
    pub policy: Arc<PolicyStore>,
    /// Layer 3; replaced when a reload changes the `jwt` section.
    pub oauth: Arc<arc_swap::ArcSwapOption<Oauth>>,
    pub governor: Arc<Governor>,
    /// The external AuthZEN PDP (`authzen.pdp`); replaced when a reload changes it.
    pub pdp: Arc<arc_swap::ArcSwapOption<crate::layers::pdp::Pdp>>,
    pub audit: Arc<AuditHub>,
}

/// What one request's audit event needs, filled as the request proceeds.
#[derive(Debug, Default)]
struct RequestLog {
    trace: pipeline::Trace,
    /// A deny that `policy.mode: shadow` let through.
    shadow: Option<Reason>,
    path: Option<String>,
    /// Where the change signals stood when the layers judged it.
    judged_at: (u64, u64),
}

/// What is known about one accepted connection.
struct Conn {
    peer: LeafInfo,
    /// The same caller with its chain, shared with the registry (re-checks).
    registered: Arc<Peer>,
    /// `peer.id` for audit events, formatted once per connection.
    caller: Arc<str>,
    activity: Arc<Activity>,
    /// The allow-list that last let this caller in (Layer 1 on each request).
    allowed: allowlist::Memo,
    /// RFC 8705 `x5t#S256` of the caller's leaf, computed once per connection.
    leaf_sha256: Box<str>,
    /// The identity headers every forwarded request gets, built once per connection.
    forwarded: [(header::HeaderName, Option<HeaderValue>); 3],
    /// `X-Spiffe-Entra-Agent-Id`, built again only when the caller's entry
    /// names another agent (a policy reload) than on its last request.
    agent_header: headers::LastValue,
}

impl Inbound {
    pub fn new(
        config: InboundConfig,
        identity: IdentityWatch,
        allowlist: Arc<AllowList>,
        metrics: Arc<Metrics>,
        layers: Layers,
        changes: Changes,
    ) -> Result<Arc<Self>, rustls::Error> {
        // A resumed session's chain is judged after the handshake (see `connection`).
        let resumption = if config.tls_resumption { Resumption::On { sessions: 1024 } } else { Resumption::Off };
        let mut tls = certs::tls::server_config(identity.clone(), allowlist.clone(), resumption)?;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let app = AppClient::new(&config.upstream, config.upstream_connect_timeout, config.upstream_response_timeout);
        let audit = layers.audit.clone();
        Ok(Arc::new(Self {
            target: Arc::from(config.upstream.as_str()),
            config,
            tls: TlsAcceptor::from(Arc::new(tls)),
            identity,
            changes,
            allowlist,
            connections: Arc::new(Connections::default()),
            app,
            ids: RequestIds::new(),
            metrics,
            layers,
            refusals: Refusals::new(audit),
        }))
    }

    pub fn connections(&self) -> &Arc<Connections> {
        &self.connections
    }

    async fn request(
        self: Arc<Self>,
        request: Request<Incoming>,
        conn: Arc<Conn>,
    ) -> Result<Response<Body>, Infallible> {
        let exchange =
            Exchange::begin(Direction::Inbound, &self.ids, request.headers(), &conn.activity).counted(&self.metrics);
        let method = request.method().clone();
        let peer_request_id = forward::peer_request_id(request.headers());
        let mut log = RequestLog::default();
        let sent = self.forward(request, &conn, exchange.hop(), &mut log).await;
        let trace = log.trace;
        let event = Event {
            caller_spiffe_id: Some(conn.caller.clone()),
            target: Some(self.target.clone()),
            method: Some(method),
            path: log.path,
            policy_ids: trace.policy_ids,
            jwt: trace.jwt,
            risk_level: trace.risk_level,
            caller_tag: trace.caller_tag,
            policy_version: trace.policy_version,
            caller_policy: trace.entry,
            pdp: trace.pdp,
            peer_request_id,
            ..Event::default()
        };
        let sink = Sink { metrics: &self.metrics, audit: &self.layers.audit };
        Ok(exchange.finish(sent, log.shadow, event, ResponseId::Ours, sink))
    }

    /// The per-request pipeline: Layer 1 again, then framing and path checks,
    /// then the app. Each phase maps its failure to a [`Reason`].
    async fn forward(&self, request: Request<Incoming>, conn: &Conn, hop: &Hop, log: &mut RequestLog) -> Sent<AppBody> {
        let path = match self.admit(&request, conn) {
            Ok(path) => path,
            Err(reason) => {
                // Never got as far as a canonical path: the audit event carries the raw one.
                log.path = Some(request.uri().path().to_owned());
                return Err(reason);
            }
        };
        log.judged_at = self.generations();
        let judged = self.layers(conn, &request, &path, hop, log).await;
        let query = request.uri().query().map(headers::without_method_override);
        // Origin-form: the app client sends it as is, with the app's `Host`.
        let uri = judged.and_then(|()| forward::origin_form(path.encoded(), query.as_deref()));
        let sent = match uri {
            Ok(uri) => self.send(request, uri, conn, &path, hop, log).await,
            Err(reason) => Err(reason),
        };
        // The audit event carries the canonical path, allowed or not.
        log.path = Some(path.into_string());
        sent
    }

    /// Layer 1 again (the caller still allowed, its certificate unexpired),
    /// then the request target: its canonical path.
    fn admit(&self, request: &Request<Incoming>, conn: &Conn) -> Result<CanonicalPath, Reason> {
        if !self.allowlist.still_allows(&conn.peer.id, &conn.allowed) {
            return Err(Reason::NotAllowed);
        }
        if conn.peer.is_expired_at(SystemTime::now()) {
            return Err(Reason::CertExpired);
        }
        request_target(request.method(), request.uri().path(), self.config.path_options)
    }

    /// Sends a judged request to the app. A request or response that may
    /// last (an upgrade, a body without a known length of at most 1 MiB) is
    /// registered so later changes judge it again (see [`Self::enforce`]),
    /// and is cut at its deadline (the caller's certificate or token expiry).
    async fn send(
        &self,
        mut request: Request<Incoming>,
        uri: Uri,
        conn: &Conn,
        path: &CanonicalPath,
        hop: &Hop,
        log: &RequestLog,
    ) -> Sent<AppBody> {
        let upgrade = forward::capture_upgrade(&mut request, self.config.upgrades.websocket);
        // Read only for a request or response that may last (two clock reads).
        let deadline = || {
            let leeway = self.layers.oauth.load().as_ref().map(|o| o.leeway());
            stream_deadline(conn.peer.not_after, log.trace.token_exp, leeway.unwrap_or_default())
        };
        let registration = |request: &Request<Incoming>| {
            let authorization = request.headers().get(header::AUTHORIZATION).cloned();
            let method = request.method().clone();
            let request = StreamRequest { method, path: path.clone(), authorization, request_id: hop.id.clone() };
            Arc::new(self.connections.stream(conn.registered.clone(), Arc::new(request)))
        };
        // A long upload is judged again too: its body to the app is cut like a response's.
        let mut stream = lasting(request.body()).then(|| registration(&request));
        let late = stream.is_none().then(|| Late {
            authorization: request.headers().get(header::AUTHORIZATION).cloned(),
            method: request.method().clone(),
        });
        let (mut parts, incoming) = request.into_parts();
        parts.uri = uri;
        parts.version = Version::HTTP_11;
        let agent_id = log.trace.entra_agent_id.as_ref();
        self.set_headers(&mut parts.headers, conn, hop, agent_id, upgrade.is_some());
        let body = body::without_spoofable_trailers(incoming, self.config.allow_underscore_headers);
        let body = match &stream {
            Some(s) => Tracked::cut(body, Cut::new(s.closed.clone(), deadline(), s.clone())),
            None => body,
        };
        let outgoing = Request::from_parts(parts, body);

        let mut response = self.app.send(outgoing).await?;
        let switch = forward::accept_switch(&mut response, upgrade)?;
        if let (true, Some(Late { authorization, method })) = (switch.is_some() || lasting(response.body()), late) {
            let request = StreamRequest { method, path: path.clone(), authorization, request_id: hop.id.clone() };
            stream = Some(Arc::new(self.connections.stream(conn.registered.clone(), Arc::new(request))));
            // A change while the app answered found no registration to judge: judge it now.
            if self.generations() != log.judged_at {
                self.changes.bump();
            }
        }
        let Some(switch) = switch else {
            return Ok((response, stream.map(|s| Cut::new(s.closed.clone(), deadline(), s))));
        };
        // Registered above: an upgraded response always lasts.
        let stream = stream.ok_or(Reason::UpstreamError)?;
        // The HTTP connection ends once it is upgraded: the tunnel holds its
        // own registration (and, inside the upgraded socket, the connection's slot).
        let idle_timeout = self.config.limits.idle_timeout;
        switch.tunnel(TunnelEnds { closed: stream.closed.clone(), deadline: Some(deadline()), idle_timeout }, stream);
        Ok((response, None))
    }

    /// Where the change signals stand (decisions, allow-list): a stream
    /// registered after they moved may have missed its re-check.
    fn generations(&self) -> (u64, u64) {
        (self.changes.generation(), self.allowlist.generation())
    }

    /// Layers 2-4 on one snapshot of the policy. In shadow mode a deny is
    /// logged and counted as `shadow_deny`, and the request goes on.
    async fn layers(
        &self,
        conn: &Conn,
        request: &Request<Incoming>,
        path: &CanonicalPath,
        hop: &Hop,
        log: &mut RequestLog,
    ) -> Result<(), Reason> {
        let Layers { policy, oauth, governor, pdp, .. } = &self.layers;
        let loaded = policy.current();
        let (oauth, pdp) = (oauth.load_full(), pdp.load_full());
        let facts = RequestFacts {
            caller: &conn.peer.id,
            method: request.method().as_str(),
            path,
            headers: request.headers(),
            leaf_sha256: Some(&conn.leaf_sha256),
            asserted: None,
            request_id: Some(&hop.id),
        };
        let metrics = Some(&*self.metrics);
        let result =
            pipeline::evaluate(&loaded, oauth.as_deref(), governor, pdp.as_deref(), facts, metrics, &mut log.trace)
                .await;
        match result {
            Ok(()) => Ok(()),
            Err(denial) => {
                self.deny_or_shadow(loaded.mode, denial.reason, &denial.policy_ids, conn, hop)?;
                log.shadow = Some(denial.reason);
                Ok(())
            }
        }
    }

    fn deny_or_shadow(
        &self,
        mode: PolicyMode,
        reason: Reason,
        policy_ids: &[String],
        conn: &Conn,
        hop: &Hop,
    ) -> Result<(), Reason> {
        let reason = pipeline::apply_mode(mode, reason)?;
        self.metrics.shadow_deny(Direction::Inbound, reason);
        tracing::info!(
            caller = %conn.peer.id, %reason, ?policy_ids, request_id = hop.id, trace_id = %hop.trace.trace_id,
            "shadow_deny: forwarded anyway"
        );
        Ok(())
    }

    /// Header hygiene (DESIGN 1.3 "Forwarding"), then the identity headers.
    fn set_headers(
        &self,
        h: &mut hyper::HeaderMap,
        conn: &Conn,
        hop: &Hop,
        entra_agent_id: Option<&Arc<str>>,
        upgrade: bool,
    ) {
        let hygiene =
            headers::Hygiene { keep_upgrade: upgrade, allow_underscores: self.config.allow_underscore_headers };
        headers::sanitize_request(h, hygiene);
        // `Host` is replaced by the app's where the request is sent (`AppClient::send`).
        for (name, value) in &conn.forwarded {
            if let Some(value) = value {
                h.insert(name, value.clone());
            }
        }
        hop.stamp(h);
        // The caller's entry names its Entra agent (the policy's word, never the caller's).
        if let Some(id) = entra_agent_id.and_then(|id| conn.agent_header.of(id)) {
            h.insert(X_SPIFFE_ENTRA_AGENT_ID, id);
        }
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    }
}

impl server::Serve for Inbound {
    async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        remote: SocketAddr,
        slot: server::Slot,
        shutdown: watch::Receiver<bool>,
    ) {
        let limits = self.config.limits;
        // The bundles the verifier can have used: judged against again below.
        let verified_with = self.identity.current();
        let handshake = self.tls.accept(tcp).into_fallible();
        let tls = match tokio::time::timeout(self.config.handshake_timeout, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err((e, tcp))) => {
                let rejection = certs::tls::rejection_of(&e);
                let reason = rejection.as_ref().map_or(Reason::HandshakeError, |r| r.reason.into());
                tracing::debug!(%remote, %reason, "inbound handshake refused");
                self.metrics.tls_handshake(Direction::Inbound, reason.as_str());
                let peer = rejection.as_ref().and_then(|r| r.peer.as_ref());
                self.refusals.record(Refusal { source: remote.ip(), reason, peer });
                // The caller reads our alert instead of a reset (see `server::linger`).
                server::linger(tcp).await;
                return;
            }
            Err(_) => {
                self.metrics.tls_handshake(Direction::Inbound, "timeout");
                return;
            }
        };
        let (_, session) = tls.get_ref();
        // Invariant: the verifier accepted a parsable SVID leaf, so this is present.
        let chain = session.peer_certificates().map(<[_]>::to_vec).unwrap_or_default();
        let Some(peer) = chain.first().and_then(|c| certs::x509::parse_leaf(c).ok()) else {
            return;
        };
        let h2 = session.alpn_protocol() == Some(b"h2");
        let resumed = session.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        // Registered first, then judged against the bundles in force now: a
        // bundle change while the handshake ran (the verifier judged the
        // chain when it arrived) either finds this connection in the
        // registry or is seen here. A resumed session (`inbound.tls_resumption:
        // true`) skipped the verifier altogether.
        let registered = Arc::new(Peer { id: peer.id.clone(), not_after: peer.not_after, chain });
        let registration = self.connections.connection(registered.clone());
        let now = self.identity.current();
        let same_bundles = match (&verified_with, &now) {
            (Some(before), Some(now)) => before.bundles().same_authorities(now.bundles()),
            (before, now) => before.is_none() && now.is_none(),
        };
        if let (true, Some(identity)) = (resumed || !same_bundles, now)
            && let Err(reason) = certs::tls::verify_peer_chain(&identity, &registered.chain)
        {
            let reason = Reason::from(reason);
            self.metrics.tls_handshake(Direction::Inbound, reason.as_str());
            self.refusals.record(Refusal { source: remote.ip(), reason, peer: Some(&peer.id) });
            return;
        }
        self.metrics.tls_handshake(Direction::Inbound, "ok");
        let expires_in = peer.not_after.duration_since(SystemTime::now()).unwrap_or_default();
        let caller = Arc::from(peer.id.as_str());
        let value = |s: &str| HeaderValue::from_str(s).ok();
        let forwarded = [
            (X_SPIFFE_CALLER_ID, value(peer.id.as_str())),
            (X_SPIFFE_TRUST_DOMAIN, value(peer.id.trust_domain_name())),
            (X_FORWARDED_FOR, value(&remote.ip().to_string())),
        ];
        let leaf_sha256 = registered.chain.first().map(|leaf| oauth::thumbprint_s256(leaf)).unwrap_or_default().into();
        let conn = Arc::new(Conn {
            peer,
            registered,
            caller,
            activity: Activity::new(),
            allowed: allowlist::Memo::default(),
            leaf_sha256,
            forwarded,
            agent_header: headers::LastValue::default(),
        });

        let builder = server::builder(&limits);
        let builder = if h2 { builder.http2_only() } else { builder.http1_only() };

        let this = self.clone();
        let served = conn.clone();
        let service = service_fn(move |req| this.clone().request(req, served.clone()));
        let io = TokioIo::new(server::Lingering::new(tls, Some(slot)));
        let connection = builder.serve_connection_with_upgrades(io, service);
        let ends = ConnectionEnds {
            activity: conn.activity.clone(),
            idle_timeout: limits.idle_timeout,
            shutdown,
            closed: Some(registration.closed.clone()),
            // Drained just before the caller's certificate expires, closed when it does.
            drain_after: Some(expires_in.saturating_sub(EXPIRY_MARGIN)),
            close_after: Some(expires_in),
        };
        server::drive(connection, ends).await;
        tracing::debug!(%remote, caller = %conn.peer.id, "inbound connection closed");
    }
}

/// What registering a stream late (after the app answered) needs of its request.
struct Late {
    authorization: Option<HeaderValue>,
    method: Method,
}

/// What the layers judge a request by, after Layer 1: `CONNECT` is refused
/// and the path must have a canonical form (`explain` runs the same).
pub fn request_target(method: &Method, path: &str, options: PathOptions) -> Result<CanonicalPath, Reason> {
    forward::refuse_connect(method)?;
    CanonicalPath::parse(path, options).map_err(|_| Reason::BadPath)
}

/// A stream ends when the caller's certificate expires, or the token that
/// allowed it does (it was accepted until `exp` + `leeway`), whichever
/// comes first.
fn stream_deadline(not_after: SystemTime, token_exp: Option<u64>, leeway: Duration) -> tokio::time::Instant {
    let token = token_exp
        .and_then(|exp| std::time::UNIX_EPOCH.checked_add(Duration::from_secs(exp)))
        .and_then(|exp| exp.checked_add(leeway));
    let end = token.map_or(not_after, |token| token.min(not_after));
    tokio::time::Instant::now() + end.duration_since(SystemTime::now()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_ends_with_the_certificate_or_the_token_whichever_is_first() {
        let now = SystemTime::now();
        let in_secs = |d: tokio::time::Instant| d.duration_since(tokio::time::Instant::now()).as_secs_f64();
        let unix = |t: SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let cert = now + Duration::from_secs(600);
        let leeway = Duration::from_secs(60);
        assert!((in_secs(stream_deadline(cert, None, leeway)) - 600.0).abs() < 5.0);
        let token = unix(now + Duration::from_secs(100));
        assert!((in_secs(stream_deadline(cert, Some(token), leeway)) - 160.0).abs() < 5.0, "token exp + leeway");
        assert!((in_secs(stream_deadline(cert, Some(u64::MAX), leeway)) - 600.0).abs() < 5.0, "no overflow");
        let past = unix(now - Duration::from_secs(3600));
        assert!(in_secs(stream_deadline(cert, Some(past), leeway)) < 1.0);
    }
}
