//! The one place where an outcome becomes an HTTP response (DESIGN 1.3,
//! "Every outcome that is not a plain allow").

use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use policy::{Layer, Reason};

use crate::dataplane::body::{self, Body};
use crate::dataplane::headers::X_DENIED_BY;

/// Status and `error` for a reason.
pub fn status_of(reason: Reason) -> (StatusCode, &'static str) {
    match reason {
        Reason::Allowed => (StatusCode::OK, "ok"),
        Reason::BadPath | Reason::AbsoluteForm => (StatusCode::BAD_REQUEST, "bad_request"),
        Reason::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        Reason::NotAllowed
        | Reason::UntrustedChain
        | Reason::NoClientCert
        | Reason::BadSvid
        | Reason::CertExpired
        | Reason::HandshakeError
        | Reason::NoCallerPolicy
        | Reason::NoMatchingRule
        | Reason::RuleDenied
        | Reason::JwtCallerMismatch
        | Reason::InsufficientRoles
        | Reason::AgentDisabled
        | Reason::HighRiskAgentBlocked
        | Reason::RiskUnavailable
        | Reason::AgentTagMismatch
        | Reason::MissingRequiredTag
        | Reason::TagsUnavailable
        | Reason::PdpDenied => (StatusCode::FORBIDDEN, "forbidden"),
        Reason::JwtRequired
        | Reason::JwtInvalid
        | Reason::JwtExpired
        | Reason::JwtNotYetValid
        | Reason::JwtWrongAudience
        | Reason::JwtWrongIssuer
        | Reason::JwtNotBound => (StatusCode::UNAUTHORIZED, "unauthorized"),
        Reason::NoRoute => (StatusCode::NOT_FOUND, "not_found"),
        Reason::UpstreamUnavailable
        | Reason::UpstreamIdentityMismatch
        | Reason::UpstreamRejectedIdentity
        | Reason::UpstreamError => (StatusCode::BAD_GATEWAY, "bad_gateway"),
        Reason::UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, "gateway_timeout"),
        Reason::NotReady | Reason::JwksUnavailable | Reason::TokenUnavailable | Reason::PdpUnavailable => {
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        }
    }
}

/// `{"error","layer","reason","request_id"}` with `X-Denied-By` (the
/// exchange adds `X-Request-Id`); nothing secret, no expected-vs-actual values.
pub fn response(reason: Reason, request_id: &str) -> Response<Body> {
    let (status, error) = status_of(reason);
    let layer: Layer = reason.layer();
    let json = serde_json::json!({
        "error": error,
        "layer": layer.as_str(),
        "reason": reason.as_str(),
        "request_id": request_id,
    });
    let mut response = Response::new(body::full(json.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(X_DENIED_BY, HeaderValue::from_static("a2a-sidecar"));
    // RFC 6750 3: a missing token gets a bare challenge, a bad one `invalid_token`.
    match reason {
        Reason::JwtRequired => {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        _ if status == StatusCode::UNAUTHORIZED => {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"invalid_token\""));
        }
        _ => {}
    }
    if reason == Reason::MethodNotAllowed {
        headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE"));
    }
    response
}
