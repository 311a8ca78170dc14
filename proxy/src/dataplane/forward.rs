//! The forwarding core the inbound and outbound listeners share: one
//! request's bookkeeping ([`Exchange`]: its ID, timing, in-flight count,
//! metrics, the deny response and the audit event) and the steps both take
//! on the way (CONNECT refused, the upstream URI built, only a WebSocket
//! upgrade captured, a `101` tunnelled, hop-by-hop headers stripped).

use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::http::uri::{Authority, Scheme};
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request, Response, StatusCode, Uri};
use policy::Reason;

use crate::dataplane::body::{Activity, Body, BoxError, Cut, InFlight, Tracked};
use crate::dataplane::deny;
use crate::dataplane::headers::{self, X_REQUEST_ID};
use crate::dataplane::request_id::{Hop, RequestIds, stamp_request_id};
use crate::dataplane::upstream::{self, TunnelEnds};
use crate::observe::audit::{AuditHub, Decision, Direction, Event};
use crate::observe::metrics::Metrics;

/// What a side hands back for one request: the upstream's response (and
/// what may cut its body), or the reason it was not forwarded.
pub type Sent<B = Incoming> = Result<(Response<B>, Option<Cut>), Reason>;

/// Whose `X-Request-Id` a response carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseId {
    /// Ours, always (inbound: the app's answer).
    Ours,
    /// The peer's, when it sent one (outbound: the peer sidecar's ID is the
    /// one in its deny body and its audit trail); else ours.
    PeerFirst,
}

/// One request through a proxy listener, from its head to its audit event.
pub struct Exchange {
    direction: Direction,
    started: Instant,
    hop: Hop,
    /// Held until the response body ends (idle timeout, drain).
    in_flight: InFlight,
}

impl Exchange {
    /// `headers`: the client's, for its `traceparent`.
    pub fn begin(direction: Direction, ids: &RequestIds, headers: &hyper::HeaderMap, activity: &Arc<Activity>) -> Self {
        Self { direction, started: Instant::now(), hop: ids.hop(headers), in_flight: activity.begin() }
    }

    /// Counted in `a2a_in_flight_requests{direction}` until its response ends.
    pub fn counted(mut self, metrics: &Metrics) -> Self {
        if let Some(gauge) = metrics.in_flight(self.direction) {
            self.in_flight.count(gauge);
        }
        self
    }

    pub fn hop(&self) -> &Hop {
        &self.hop
    }

    /// The response to send for `sent`: the upstream's (its body counted in
    /// flight until it ends) or the deny response; counted in the metrics
    /// (a shadow deny was counted when it was let through), stamped with
    /// `X-Request-Id` per `response_id`, and recorded as `event` (whose
    /// caller, target, path and layer findings the side filled in).
    pub fn finish<B>(
        self,
        sent: Sent<B>,
        shadow: Option<Reason>,
        event: Event,
        response_id: ResponseId,
        sink: Sink<'_>,
    ) -> Response<Body>
    where
        B: http_body::Body<Data = bytes::Bytes> + Unpin + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let Self { direction, started, hop: Hop { id, trace }, in_flight } = self;
        let (mut response, decision, reason) = match sent {
            Ok((response, cut)) => {
                let (decision, reason) = match shadow {
                    Some(reason) => (Decision::ShadowDeny, reason),
                    None => (Decision::Allow, Reason::Allowed),
                };
                (response.map(|body| Tracked::wrap(body, in_flight, cut)), decision, reason)
            }
            Err(reason) => {
                tracing::debug!(direction = direction.as_str(), %reason, request_id = id, trace_id = %trace.trace_id, "request denied");
                let response = deny::response(reason, &id).map(|body| Tracked::wrap(body, in_flight, None));
                (response, Decision::Deny, reason)
            }
        };
        if decision != Decision::ShadowDeny {
            sink.metrics.request(direction, reason);
        }
        let elapsed = started.elapsed();
        sink.metrics.request_duration(direction, elapsed.as_secs_f64());
        let keep = response_id == ResponseId::PeerFirst && response.headers().contains_key(X_REQUEST_ID);
        if !keep {
            stamp_request_id(response.headers_mut(), &id);
        }
        sink.audit.record(Event {
            direction,
            request_id: Some(id),
            trace: Some(trace),
            decision,
            layer: reason.layer(),
            reason: reason.into(),
            status: response.status().as_u16(),
            latency_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            ..event
        });
        response
    }
}

/// Where an exchange is counted and recorded.
#[derive(Clone, Copy)]
pub struct Sink<'a> {
    pub metrics: &'a Metrics,
    pub audit: &'a AuditHub,
}

/// The caller's own request id, from an authenticated peer: exactly one
/// `X-Request-Id` of 1 to 128 visible ASCII characters, else none (it goes
/// into the audit trail, never to the app: ours replaces it there).
pub fn peer_request_id(headers: &hyper::HeaderMap) -> Option<String> {
    let mut values = headers.get_all(X_REQUEST_ID).iter();
    let (Some(value), None) = (values.next(), values.next()) else { return None };
    let bytes = value.as_bytes();
    let fits = (1..=128).contains(&bytes.len()) && bytes.iter().all(u8::is_ascii_graphic);
    fits.then(|| String::from_utf8_lossy(bytes).into_owned())
}

/// A proxy never tunnels for a client: `CONNECT` is refused.
pub fn refuse_connect(method: &Method) -> Result<(), Reason> {
    if method == Method::CONNECT { Err(Reason::MethodNotAllowed) } else { Ok(()) }
}

/// `scheme://authority` + `path` (already in the form to send) + `query`.
pub fn upstream_uri(scheme: Scheme, authority: &Authority, path: &str, query: Option<&str>) -> Result<Uri, Reason> {
    Uri::builder()
        .scheme(scheme)
        .authority(authority.clone())
        .path_and_query(with_query(path.to_owned(), query))
        .build()
        .map_err(|_| Reason::BadPath)
}

/// The origin-form target (`path?query`) for the app, built in one
/// allocation: `path` (already in the form to send) with the query appended.
pub fn origin_form(path: String, query: Option<&str>) -> Result<Uri, Reason> {
    Uri::try_from(with_query(path, query)).map_err(|_| Reason::BadPath)
}

/// `path?query`; an empty query is dropped.
fn with_query(mut path: String, query: Option<&str>) -> String {
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        path.reserve(query.len() + 1);
        path.push('?');
        path.push_str(query);
    }
    path
}

/// The client's side of an upgrade, when `allowed` and the request is a
/// WebSocket upgrade (the only one ever forwarded: anything else, `h2c`
/// above all, goes on as an ordinary request with its `Upgrade` stripped).
pub fn capture_upgrade(request: &mut Request<Incoming>, allowed: bool) -> Option<OnUpgrade> {
    (allowed && headers::websocket_upgrade(request.method(), request.version(), request.headers()))
        .then(|| hyper::upgrade::on(request))
}

/// Readies the response for the client: hop-by-hop headers go, and a
/// `101` must switch to the WebSocket the client asked for (anything else
/// would be a raw tunnel nobody asked for: refused). Returns the switch to
/// tunnel, if there is one.
pub fn accept_switch<B>(response: &mut Response<B>, requested: Option<OnUpgrade>) -> Result<Option<Switch>, Reason> {
    let upgraded = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let switch = if upgraded {
        let Some(downstream) = requested.filter(|_| headers::switches_to_websocket(response.headers())) else {
            tracing::warn!("the upstream switched protocols unasked; refused");
            return Err(Reason::UpstreamError);
        };
        Some(Switch { downstream, upstream: hyper::upgrade::on(&mut *response) })
    } else {
        None
    };
    headers::strip_hop_by_hop(response.headers_mut(), upgraded);
    Ok(switch)
}

/// Both ends of an accepted WebSocket switch.
pub struct Switch {
    downstream: OnUpgrade,
    upstream: OnUpgrade,
}

impl Switch {
    /// Copies bytes both ways until a side closes or one of `ends` comes;
    /// `guard` (a registration, a slot) is held until then.
    pub fn tunnel(self, ends: TunnelEnds, guard: impl Send + 'static) {
        tokio::spawn(async move {
            upstream::tunnel(self.downstream, self.upstream, ends).await;
            drop(guard);
        });
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::Full;

    use super::*;

    #[test]
    fn a_peer_request_id_is_one_short_visible_value() {
        let with = |values: &[&[u8]]| {
            let mut headers = hyper::HeaderMap::new();
            for v in values {
                headers.append(X_REQUEST_ID, hyper::header::HeaderValue::from_bytes(v).unwrap());
            }
            peer_request_id(&headers)
        };
        assert_eq!(with(&[b"2f18c97caa63043e0000000000000008"]).as_deref(), Some("2f18c97caa63043e0000000000000008"));
        assert_eq!(with(&[]), None);
        assert_eq!(with(&[b"a", b"b"]), None, "two values: which one would be the caller's?");
        assert_eq!(with(&[b"has space"]), None);
        assert_eq!(with(&[b"\xff\xfe"]), None);
        assert_eq!(with(&[&[b'x'; 129]]), None);
        assert_eq!(with(&[&[b'x'; 128]]).map(|v| v.len()), Some(128));
    }

    fn hub() -> (Arc<Metrics>, Arc<AuditHub>) {
        let metrics = Arc::new(Metrics::new().unwrap());
        (metrics.clone(), AuditHub::new(16, Vec::new(), None, metrics))
    }

    fn answer(request_id: Option<&str>) -> Response<Full<bytes::Bytes>> {
        let mut response = Response::new(Full::new(bytes::Bytes::from_static(b"hi")));
        if let Some(id) = request_id {
            response.headers_mut().insert(X_REQUEST_ID, hyper::header::HeaderValue::from_str(id).unwrap());
        }
        response
    }

    #[test]
    fn a_deny_is_answered_counted_and_recorded_with_one_request_id() {
        let (metrics, audit) = hub();
        let exchange =
            Exchange::begin(Direction::Inbound, &RequestIds::new(), &hyper::HeaderMap::new(), &Activity::new());
        let id = exchange.hop().id.clone();
        let sink = Sink { metrics: &metrics, audit: &audit };
        let sent: Sent<Full<bytes::Bytes>> = Err(Reason::NoMatchingRule);
        let response = exchange.finish(sent, None, Event::default(), ResponseId::Ours, sink);
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(response.headers()[X_REQUEST_ID], id.as_str());
        let event = &audit.recent(1, None, None)[0];
        assert_eq!(
            (event.decision, event.layer, event.reason),
            (Decision::Deny, policy::Layer::Rbac, Reason::NoMatchingRule.into())
        );
        assert_eq!((event.request_id.as_deref(), event.status), (Some(id.as_str()), 403));
        assert!(metrics.encode().contains(r#"reason="no_matching_rule""#));
    }

    #[test]
    fn whose_request_id_an_answer_carries() {
        let (metrics, audit) = hub();
        let sink = Sink { metrics: &metrics, audit: &audit };
        let ids = RequestIds::new();
        for (response_id, from_upstream, ours) in [
            (ResponseId::Ours, Some("app-made"), true),
            (ResponseId::PeerFirst, Some("peer-made"), false),
            (ResponseId::PeerFirst, None, true),
        ] {
            let exchange = Exchange::begin(Direction::Outbound, &ids, &hyper::HeaderMap::new(), &Activity::new());
            let id = exchange.hop().id.clone();
            let response =
                exchange.finish(Ok((answer(from_upstream), None)), None, Event::default(), response_id, sink);
            let expected = if ours { id.as_str() } else { from_upstream.unwrap() };
            assert_eq!(response.headers()[X_REQUEST_ID], expected, "{response_id:?} {from_upstream:?}");
        }
    }

    #[test]
    fn a_shadow_deny_is_forwarded_and_recorded_as_such_but_counted_once() {
        let (metrics, audit) = hub();
        let sink = Sink { metrics: &metrics, audit: &audit };
        let exchange =
            Exchange::begin(Direction::Inbound, &RequestIds::new(), &hyper::HeaderMap::new(), &Activity::new());
        let response = exchange.finish(
            Ok((answer(None), None)),
            Some(Reason::RuleDenied),
            Event::default(),
            ResponseId::Ours,
            sink,
        );
        assert_eq!(response.status(), StatusCode::OK);
        let event = &audit.recent(1, None, None)[0];
        assert_eq!((event.decision, event.reason), (Decision::ShadowDeny, Reason::RuleDenied.into()));
        // The pipeline counted it when it let it through; the exchange does not count it again.
        assert!(!metrics.encode().contains(r#"reason="rule_denied""#));
    }

    #[test]
    fn upstream_uris() {
        let authority: Authority = "app:8080".parse().unwrap();
        let uri = |path, query| upstream_uri(Scheme::HTTP, &authority, path, query).map(|u| u.to_string());
        assert_eq!(uri("/a/b", None), Ok("http://app:8080/a/b".into()));
        assert_eq!(uri("/a", Some("x=1&y=2")), Ok("http://app:8080/a?x=1&y=2".into()));
        assert_eq!(uri("/a", Some("")), Ok("http://app:8080/a".into()), "an empty query is dropped");
        assert_eq!(uri("/a b", None), Err(Reason::BadPath), "never a URI hyper would refuse to send");
        let https = upstream_uri(Scheme::HTTPS, &authority, "/", None).unwrap();
        assert_eq!(https.scheme(), Some(&Scheme::HTTPS));
    }

    #[test]
    fn origin_forms() {
        let uri = |path: &str, query| origin_form(path.to_owned(), query).map(|u| u.to_string());
        assert_eq!(uri("/a/b", None), Ok("/a/b".into()));
        assert_eq!(uri("/a", Some("x=1&y=2")), Ok("/a?x=1&y=2".into()));
        assert_eq!(uri("/a", Some("")), Ok("/a".into()), "an empty query is dropped");
        assert_eq!(uri("/a b", None), Err(Reason::BadPath), "never a URI hyper would refuse to send");
        let origin = origin_form("/p".to_owned(), Some("q")).unwrap();
        assert_eq!((origin.scheme(), origin.authority(), origin.path(), origin.query()), (None, None, "/p", Some("q")));
    }
}
