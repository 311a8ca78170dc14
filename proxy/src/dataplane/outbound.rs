//! The outbound listener: plain HTTP from the local app on loopback, routed
//! by `Host` (or an opt-in path prefix) to a peer sidecar over mTLS, the
//! peer verified by its SPIFFE ID. One connection pool per route, renewed
//! when our SVID rotates so peers always see the current certificate.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use certs::{Identity, IdentityWatch};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::http::uri::Scheme;
use hyper::service::service_fn;
use hyper::{Request, Response, Version};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use policy::Reason;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::config::{OutboundConfig, RouteConfig};
use crate::dataplane::body::{Activity, Body};
use crate::dataplane::forward::{self, Exchange, ResponseId, Sent, Sink};
use crate::dataplane::headers;
use crate::dataplane::request_id::{Hop, RequestIds};
use crate::dataplane::server::{self, ConnectionEnds};
use crate::dataplane::upstream::sidecar::{RefusalMemo, SidecarConnector};
use crate::dataplane::upstream::{self, TunnelEnds};
use crate::facts::entra_token::EntraTokens;
use crate::observe::audit::{AuditHub, Direction, Event};
use crate::observe::metrics::Metrics;

pub struct Outbound {
    config: OutboundConfig,
    audit: Arc<AuditHub>,
    /// The sidecar's own Entra tokens, for routes with `entra_token`.
    tokens: Option<Arc<EntraTokens>>,
    routes: Vec<Route>,
    identity: IdentityWatch,
    ids: RequestIds,
    metrics: Arc<Metrics>,
}

struct Route {
    config: RouteConfig,
    pools: ArcSwapOption<Pools>,
}

/// The pools of one route for one SVID: HTTP/2-capable, and HTTP/1.1 for upgrades.
struct Pools {
    identity: Arc<Identity>,
    any: Client<SidecarConnector, Body>,
    http1: Client<SidecarConnector, Body>,
    refusals: RefusalMemo,
}

impl Outbound {
    pub fn new(
        config: OutboundConfig,
        identity: IdentityWatch,
        metrics: Arc<Metrics>,
        tokens: Option<Arc<EntraTokens>>,
        audit: Arc<AuditHub>,
    ) -> Arc<Self> {
        let routes = config.routes.iter().map(|r| Route { config: r.clone(), pools: ArcSwapOption::empty() }).collect();
        Arc::new(Self { config, audit, tokens, routes, identity, ids: RequestIds::new(), metrics })
    }

    async fn request(
        self: Arc<Self>,
        request: Request<Incoming>,
        activity: Arc<Activity>,
    ) -> Result<Response<Body>, Infallible> {
        let exchange =
            Exchange::begin(Direction::Outbound, &self.ids, request.headers(), &activity).counted(&self.metrics);
        let (method, path) = (request.method().clone(), request.uri().path().to_owned());
        let host = request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(Arc::from);
        // One snapshot of our identity for the connection and the audit event (it may rotate meanwhile).
        let identity = self.identity.current();
        let sent = self.forward(request, exchange.hop(), identity.as_ref()).await;
        let event = Event {
            caller_spiffe_id: identity.map(|i| Arc::from(i.svid().id().as_str())),
            target: host,
            method: Some(method),
            path: Some(path),
            ..Event::default()
        };
        let sink = Sink { metrics: &self.metrics, audit: &self.audit };
        Ok(exchange.finish(sent, None, event, ResponseId::PeerFirst, sink))
    }

    async fn forward(&self, mut request: Request<Incoming>, hop: &Hop, identity: Option<&Arc<Identity>>) -> Sent {
        forward::refuse_connect(request.method())?;
        // HTTP/1 absolute-form (`GET http://host/ HTTP/1.1`) would let the app pick any destination.
        if request.version() < Version::HTTP_2 && request.uri().scheme().is_some() {
            return Err(Reason::AbsoluteForm);
        }
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| request.uri().authority().map(|a| a.as_str()))
            .unwrap_or_default();
        let (route, path) = self.pick(host, request.uri().path()).ok_or(Reason::NoRoute)?;
        let identity = identity.ok_or(Reason::NotReady)?;
        let uri = forward::upstream_uri(Scheme::HTTPS, &route.config.upstream, path, request.uri().query())?;

        // As inbound: only a WebSocket upgrade travels; anything else is an ordinary request.
        let upgrade = forward::capture_upgrade(&mut request, true);
        let (mut parts, incoming) = request.into_parts();
        parts.uri = uri;
        headers::strip_hop_by_hop(&mut parts.headers, upgrade.is_some());
        parts.headers.remove(header::HOST);
        if let Some(scope) = &route.config.entra_scope
            && !parts.headers.contains_key(header::AUTHORIZATION)
        {
            let tokens = self.tokens.as_ref().ok_or(Reason::TokenUnavailable)?;
            let token = tokens.token(scope).await.map_err(|e| {
                tracing::warn!(error = %e, route = route.config.name, "no entra token for the route");
                Reason::TokenUnavailable
            })?;
            let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| Reason::TokenUnavailable)?;
            parts.headers.insert(header::AUTHORIZATION, value);
        }
        hop.stamp(&mut parts.headers);
        // The peer connection's protocol (h2 or HTTP/1.1) is chosen by ALPN, not by the app.
        parts.version = Version::HTTP_11;
        let outgoing = Request::from_parts(parts, crate::dataplane::body::boxed(incoming));

        let pools = route.pools(identity, &self.config)?;
        let client = if upgrade.is_some() { &pools.http1 } else { &pools.any };
        let mut response =
            upstream::with_timeout(self.config.response_timeout, client.request(outgoing), Some(&pools.refusals))
                .await?;
        if let Some(switch) = forward::accept_switch(&mut response, upgrade)? {
            let idle_timeout = self.config.limits.idle_timeout;
            switch.tunnel(TunnelEnds { closed: Default::default(), deadline: None, idle_timeout }, ());
        }
        Ok((response, None))
    }

    fn pick<'p>(&self, host: &str, path: &'p str) -> Option<(&Route, &'p str)> {
        let (index, path) = route_for(self.routes.iter().map(|r| &r.config), host, path)?;
        Some((self.routes.get(index)?, path))
    }
}

impl server::Serve for Outbound {
    async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        remote: SocketAddr,
        slot: server::Slot,
        shutdown: watch::Receiver<bool>,
    ) {
        let limits = self.config.limits;
        let builder = server::builder(&limits);
        let activity = Activity::new();
        let this = self.clone();
        let tracked = activity.clone();
        let service = service_fn(move |req| this.clone().request(req, tracked.clone()));
        let io = TokioIo::new(server::Lingering::new(tcp, Some(slot)));
        let connection = builder.serve_connection_with_upgrades(io, service);
        let ends = ConnectionEnds {
            activity,
            idle_timeout: limits.idle_timeout,
            shutdown,
            closed: None,
            drain_after: None,
            close_after: None,
        };
        server::drive(connection, ends).await;
        tracing::debug!(%remote, "outbound connection closed");
    }
}

/// Route by `Host` (port stripped, case-insensitive); else by opt-in path
/// prefix, which is stripped. Returns the route's index and the path to send.
fn route_for<'r, 'p>(
    routes: impl Iterator<Item = &'r RouteConfig> + Clone,
    host: &str,
    path: &'p str,
) -> Option<(usize, &'p str)> {
    let name = strip_port(host);
    if let Some(index) = routes.clone().position(|r| r.name.eq_ignore_ascii_case(name)) {
        return Some((index, path));
    }
    routes.enumerate().find_map(|(index, route)| {
        let prefix = route.path_prefix.as_deref()?;
        match path.strip_prefix(prefix)? {
            "" => Some((index, "/")),
            rest if rest.starts_with('/') => Some((index, rest)),
            _ => None,
        }
    })
}

impl Route {
    /// The pools for the current SVID, built on first use after each rotation.
    fn pools(&self, identity: &Arc<Identity>, config: &OutboundConfig) -> Result<Arc<Pools>, Reason> {
        if let Some(current) = self.pools.load_full().filter(|p| Arc::ptr_eq(&p.identity, identity)) {
            return Ok(current);
        }
        let watch = IdentityWatch::fixed(identity.clone());
        let refusals = RefusalMemo::default();
        let build = |http1_only| {
            SidecarConnector::new(watch.clone(), self.config.server_id.clone(), config.connect_timeout, http1_only)
                .map(|connector| connector.with_refusals(refusals.clone()))
                .map(|connector| {
                    Client::builder(TokioExecutor::new())
                        .pool_idle_timeout(crate::dataplane::upstream::POOL_IDLE)
                        .pool_timer(TokioTimer::new())
                        .timer(TokioTimer::new())
                        .build(connector)
                })
                .map_err(|_| Reason::UpstreamError)
        };
        let pools = Arc::new(Pools { identity: identity.clone(), any: build(false)?, http1: build(true)?, refusals });
        self.pools.store(Some(pools.clone()));
        Ok(pools)
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| h.trim_start_matches('['));
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, prefix: Option<&str>) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            path_prefix: prefix.map(Into::into),
            upstream: "peer:8443".parse().unwrap(),
            server_id: "spiffe://a.example/peer".parse().unwrap(),
            entra_scope: None,
        }
    }

    #[test]
    fn a_route_is_picked_by_host_then_by_path_prefix() {
        let routes = [route("budget-backend", None), route("menus", Some("/menus"))];
        let pick = |host: &str, path: &'static str| route_for(routes.iter(), host, path);
        assert_eq!(pick("budget-backend", "/a"), Some((0, "/a")));
        assert_eq!(pick("Budget-Backend:8080", "/a"), Some((0, "/a")), "port stripped, any case");
        assert_eq!(pick("menus", "/x"), Some((1, "/x")), "a name matches before a prefix");
        assert_eq!(pick("elsewhere", "/menus/today"), Some((1, "/today")), "the prefix is stripped");
        assert_eq!(pick("elsewhere", "/menus"), Some((1, "/")));
        assert_eq!(pick("elsewhere", "/menusx/today"), None, "a prefix ends at a segment");
        assert_eq!(pick("elsewhere", "/a"), None);
    }

    #[test]
    fn ports_are_stripped_from_names_and_addresses() {
        assert_eq!(strip_port("host:8080"), "host");
        assert_eq!(strip_port("host"), "host");
        assert_eq!(strip_port("[::1]:8080"), "::1");
        assert_eq!(strip_port("[::1]"), "::1");
        assert_eq!(strip_port(""), "");
    }
}
