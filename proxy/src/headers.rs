//! Header hygiene (DESIGN 1.3 "Forwarding").

use hyper::HeaderMap;
use hyper::header::{self, HeaderName, HeaderValue};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_DENIED_BY: HeaderName = HeaderName::from_static("x-denied-by");
pub const X_SPIFFE_CALLER_ID: HeaderName = HeaderName::from_static("x-spiffe-caller-id");
pub const X_SPIFFE_TRUST_DOMAIN: HeaderName = HeaderName::from_static("x-spiffe-trust-domain");
pub const X_SPIFFE_ENTRA_AGENT_ID: HeaderName = HeaderName::from_static("x-spiffe-entra-agent-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Hop-by-hop headers (RFC 9110 7.6.1) plus the legacy ones proxies still see.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// Removes hop-by-hop headers and every header named in `Connection`. For an
/// upgrade that is being forwarded, `Upgrade` and `Connection: upgrade` stay.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    let upgrade = keep_upgrade.then(|| headers.get(header::UPGRADE).cloned()).flatten();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    if let Some(upgrade) = upgrade {
        headers.insert(header::UPGRADE, upgrade);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Removes everything a caller must not be able to assert to the app:
/// identity headers (`x-spiffe-*` / `x_spiffe_*`, any case), request IDs,
/// client-cert and forwarding headers. Header names are already lower case.
pub fn strip_spoofable(headers: &mut HeaderMap) {
    let spoofable: Vec<HeaderName> = headers.keys().filter(|name| is_spoofable(name.as_str())).cloned().collect();
    for name in spoofable {
        headers.remove(name);
    }
}

fn is_spoofable(name: &str) -> bool {
    name.starts_with("x-spiffe-")
        || name.starts_with("x_spiffe_")
        || name.starts_with("x-forwarded-")
        || name.starts_with("x_forwarded_")
        || matches!(name, "x-request-id" | "x_request_id" | "x-forwarded-client-cert" | "forwarded" | "x-forwarded-for")
}

/// True for an HTTP/1.1 upgrade request (WebSocket): `Connection: upgrade` and an `Upgrade` header.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Trailers never carry identity: the same names are dropped from them.
pub fn strip_spoofable_trailers(trailers: &mut HeaderMap) {
    strip_spoofable(trailers);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap()))
            .collect()
    }

    #[test]
    fn spoofable_and_hop_by_hop_headers_are_removed() {
        let mut h = map(&[
            ("X-Spiffe-Caller-Id", "spiffe://evil/x"),
            ("x_spiffe_caller_id", "spiffe://evil/y"),
            ("X-SPIFFE-Trust-Domain", "evil"),
            ("x-request-id", "abc"),
            ("x-forwarded-for", "1.2.3.4"),
            ("X-Forwarded-Host", "evil"),
            ("x_forwarded_proto", "http"),
            ("forwarded", "for=1.2.3.4"),
            ("x-forwarded-client-cert", "Hash=..."),
            ("connection", "keep-alive, X-Custom-Hop"),
            ("x-custom-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("authorization", "Bearer t"),
            ("x-app", "kept"),
        ]);
        strip_hop_by_hop(&mut h, false);
        strip_spoofable(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "x-app"]);
    }

    #[test]
    fn upgrades_keep_their_headers() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket"), ("sec-websocket-key", "k")]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
        assert!(h.contains_key("sec-websocket-key"));
        assert!(!is_upgrade(&map(&[("upgrade", "websocket")])));
    }
}
