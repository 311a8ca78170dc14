//! The telemetry listener: `/healthz`, `/readyz`, `/metrics` (no auth).
//!
//! Readiness is local state only (DESIGN 1.8): an unexpired SVID, and the
//! policy loaded when the sidecar has an inbound side. A Graph or JWKS outage
//! must not take every pod out of service.

use std::sync::Arc;

use certs::IdentityWatch;
use hyper::{Method, Request, Response, StatusCode, body::Incoming};

use crate::dataplane::body::{self, Body};
use crate::observe::metrics::Metrics;

/// What the telemetry routes read.
#[derive(Debug, Clone)]
pub struct Telemetry {
    pub identity: IdentityWatch,
    pub metrics: Arc<Metrics>,
    /// False until the policy is loaded (the listener starts before it, so
    /// `/healthz` answers while a large policy compiles); true from the start
    /// for a sidecar without inbound, which needs none.
    pub policy_loaded: Arc<std::sync::atomic::AtomicBool>,
    /// Set at SIGTERM: not ready from then on, while still serving.
    pub terminating: Arc<std::sync::atomic::AtomicBool>,
}

/// Why the sidecar is not ready, or `None` when it is: local state only
/// (`/readyz`, and `/mgmt/health` reports the same).
pub fn not_ready_reason(identity: &IdentityWatch) -> Option<&'static str> {
    match identity.state() {
        certs::IdentityState::Initializing => Some("no svid yet"),
        certs::IdentityState::Unavailable(_) => Some("svid expired"),
        certs::IdentityState::Available(_) if !identity.is_ready() => Some("svid expired"),
        certs::IdentityState::Available(_) => None,
    }
}

impl Telemetry {
    /// Why `/readyz` is 503, or `None`.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        if self.terminating.load(std::sync::atomic::Ordering::Acquire) {
            return Some("shutting down");
        }
        if !self.policy_loaded.load(std::sync::atomic::Ordering::Acquire) {
            return Some("no policy loaded yet");
        }
        not_ready_reason(&self.identity)
    }

    pub async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        match (request.method(), request.uri().path()) {
            (&Method::GET | &Method::HEAD, "/healthz") => text(StatusCode::OK, "ok\n".into()),
            (&Method::GET | &Method::HEAD, "/readyz") => match self.not_ready_reason() {
                None => text(StatusCode::OK, "ready\n".into()),
                Some(why) => {
                    // What the identity source last failed with says why there is no SVID.
                    let cause = self.identity.status().last_error.filter(|_| why.contains("svid"));
                    let cause = cause.map(|e| format!(" ({e})")).unwrap_or_default();
                    text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}{cause}\n"))
                }
            },
            (&Method::GET, "/metrics") => {
                let mut response = text(StatusCode::OK, self.metrics.encode());
                response.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            (_, "/healthz" | "/readyz" | "/metrics") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n".into())
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
        }
    }
}

/// Every answer closes its connection: anyone who reaches this listener (it
/// needs no key) could otherwise hold its connection slots with keep-alive
/// and starve the kubelet's probes.
fn text(status: StatusCode, text: String) -> Response<Body> {
    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
#[cfg(feature = "dev")]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use certs::TrustDomain;
    use certs::dev::DevCa;

    use super::*;

    #[test]
    fn ready_needs_an_unexpired_svid_and_the_policy() {
        let ca = DevCa::generate(&TrustDomain::new("a.example").unwrap()).unwrap();
        let identity =
            Arc::new(ca.identity(&"spiffe://a.example/x".parse().unwrap(), Duration::from_secs(60), &[]).unwrap());
        let telemetry = Telemetry {
            identity: IdentityWatch::fixed(identity),
            metrics: Arc::new(Metrics::new().unwrap()),
            policy_loaded: Arc::new(AtomicBool::new(false)),
            terminating: Arc::new(AtomicBool::new(false)),
        };
        assert_eq!(telemetry.not_ready_reason(), Some("no policy loaded yet"), "an SVID alone is not enough");
        telemetry.policy_loaded.store(true, Ordering::Release);
        assert_eq!(telemetry.not_ready_reason(), None);
        telemetry.terminating.store(true, Ordering::Release);
        assert_eq!(telemetry.not_ready_reason(), Some("shutting down"));
        telemetry.terminating.store(false, Ordering::Release);
        let (_publisher, initializing) = certs::rotation::channel();
        let waiting = Telemetry { identity: initializing, ..telemetry };
        assert_eq!(waiting.not_ready_reason(), Some("no svid yet"));
    }
}
