//! Header hygiene (DESIGN 1.3 "Forwarding"): what never crosses the sidecar.
//!
//! Header names are compared after mapping `_` to `-`, because CGI/WSGI-style
//! servers map both to the same variable (`x_spiffe_caller_id` and
//! `x-spiffe-caller-id` are both `HTTP_X_SPIFFE_CALLER_ID`); and by default
//! a request header whose name contains `_` is dropped outright, as nginx
//! does (`inbound.allow_underscore_headers`).

use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{HeaderMap, Method, Version};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_DENIED_BY: HeaderName = HeaderName::from_static("x-denied-by");
pub const X_SPIFFE_CALLER_ID: HeaderName = HeaderName::from_static("x-spiffe-caller-id");
pub const X_SPIFFE_TRUST_DOMAIN: HeaderName = HeaderName::from_static("x-spiffe-trust-domain");
pub const X_SPIFFE_ENTRA_AGENT_ID: HeaderName = HeaderName::from_static("x-spiffe-entra-agent-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Hop-by-hop headers (RFC 9110 7.6.1), the legacy ones proxies still see,
/// and `HTTP2-Settings` (only meaningful with an `h2c` upgrade, which is
/// never forwarded).
const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "http2-settings",
];

/// Headers that let a caller override what a framework acts on: the method
/// (a caller allowed `POST` could otherwise perform `DELETE`), the path
/// (IIS and older PHP frameworks route by `X-Original-URL`), or the client
/// address (the app must see the sidecar's `X-Forwarded-For` only).
const OVERRIDES: [&str; 12] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-cluster-client-ip",
];

/// How a caller's headers are cleaned before they reach the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hygiene {
    /// Forward an `Upgrade` that was accepted (see [`websocket_upgrade`]).
    pub keep_upgrade: bool,
    /// `inbound.allow_underscore_headers`: keep names with `_` (those that
    /// map onto a header the sidecar strips or sets are dropped anyway).
    pub allow_underscores: bool,
}

/// True for the one upgrade the sidecar forwards: an HTTP/1.1 `GET` with
/// `Connection: upgrade` and exactly one `Upgrade` header whose value is the
/// single token `websocket`. Anything else (`h2c` above all: it would turn
/// the connection into a raw tunnel to the app, past every later request's
/// policy check) is stripped and the request forwarded as an ordinary one.
pub fn websocket_upgrade(method: &Method, version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11 && method == Method::GET && single_websocket(headers) && connection_has_upgrade(headers)
}

/// True when a `101` response switches to WebSocket and nothing else.
pub fn switches_to_websocket(headers: &HeaderMap) -> bool {
    single_websocket(headers)
}

fn single_websocket(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::UPGRADE).iter();
    matches!((values.next(), values.next()), (Some(v), None) if v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"))
}

fn connection_has_upgrade(headers: &HeaderMap) -> bool {
    connection_tokens(headers).any(|token| token.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop headers (and `HTTP2-Settings`) and every header named
/// in `Connection`, comparing names with `_` read as `-`. An accepted
/// upgrade keeps `Upgrade` and gets `Connection: upgrade`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let upgrade = keep_upgrade.then(|| headers.get(header::UPGRADE).cloned()).flatten();
    // Usually empty (`Connection: keep-alive` or `close` name nothing more): no allocation.
    let named: Vec<String> = connection_tokens(headers)
        .filter(|t| !t.eq_ignore_ascii_case("close") && !HOP_BY_HOP.iter().any(|h| same_name(t, h)))
        .map(str::to_ascii_lowercase)
        .collect();
    let hop =
        |name: &str| HOP_BY_HOP.iter().copied().chain(named.iter().map(String::as_str)).any(|h| same_name(name, h));
    remove_where(headers, hop);
    if let Some(upgrade) = upgrade {
        headers.insert(header::UPGRADE, upgrade);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Inbound request hygiene: hop-by-hop headers, then everything a caller
/// must not be able to assert to the app ([`is_spoofable`]), method, path
/// and client-address overrides, and (unless allowed) every name with `_`.
pub fn sanitize_request(headers: &mut HeaderMap, hygiene: Hygiene) {
    strip_hop_by_hop(headers, hygiene.keep_upgrade);
    // `100-continue` is answered to the caller by our own server; the app
    // gets the body without being asked (Envoy drops `Expect` the same way),
    // so an app never reads a body it was told it could refuse as a request.
    headers.remove(header::EXPECT);
    remove_where(headers, |name| caller_must_not_send(name, hygiene.allow_underscores));
}

/// Trailers never carry identity, overrides or (unless allowed) underscore names.
pub fn sanitize_trailers(trailers: &mut HeaderMap, allow_underscores: bool) {
    remove_where(trailers, |name| {
        caller_must_not_send(name, allow_underscores) || HOP_BY_HOP.iter().any(|h| same_name(name, h))
    });
}

fn caller_must_not_send(name: &str, allow_underscores: bool) -> bool {
    if is_spoofable(name) || OVERRIDES.iter().any(|m| same_name(name, m)) {
        return true;
    }
    name.contains('_') && (!allow_underscores || ["content-length", "host"].iter().any(|h| same_name(name, h)))
}

/// Headers (by prefix) that carry a caller's identity where other proxies
/// and platforms set it: ours, forwarding, Azure App Service's Easy Auth,
/// oauth2-proxy's auth request.
const IDENTITY_PREFIXES: [&str; 5] =
    ["x-spiffe-", "x-forwarded-", "x-ms-client-principal", "x-ms-token-", "x-auth-request-"];

/// The same, by exact name: request IDs, client certificates, remote users.
const IDENTITY_NAMES: [&str; 9] = [
    "x-request-id",
    "forwarded",
    "x-forwarded-client-cert",
    "x-arr-clientcert",
    "ssl-client-cert",
    "x-ssl-client-cert",
    "x-client-cert",
    "remote-user",
    "x-remote-user",
];

/// Identity, request-ID, client-cert and forwarding headers, any case, `_`
/// read as `-`. Header names are already lower case.
pub fn is_spoofable(name: &str) -> bool {
    IDENTITY_PREFIXES.iter().any(|p| starts_with_name(name, p)) || IDENTITY_NAMES.iter().any(|n| same_name(name, n))
}

/// `query` without `_method` parameters: Laravel and Symfony take one as the
/// request's method (a caller allowed `POST` could otherwise `DELETE`). The
/// key is compared after percent-decoding, in any case.
pub fn without_method_override(query: &str) -> std::borrow::Cow<'_, str> {
    let suspect = query.contains('%') || query.as_bytes().windows(7).any(|w| w.eq_ignore_ascii_case(b"_method"));
    if !suspect {
        return std::borrow::Cow::Borrowed(query);
    }
    let overrides = |pair: &&str| {
        let key = pair.split('=').next().unwrap_or_default().replace('+', " ");
        percent_encoding::percent_decode_str(&key).decode_utf8_lossy().trim().eq_ignore_ascii_case("_method")
    };
    if !query.split('&').any(|pair| overrides(&pair)) {
        return std::borrow::Cow::Borrowed(query);
    }
    std::borrow::Cow::Owned(query.split('&').filter(|pair| !overrides(pair)).collect::<Vec<_>>().join("&"))
}

/// A header value and the text it was built from, reused while the same
/// text is asked for (a value that changes rarely, asked for on every request).
#[derive(Debug, Default)]
pub struct LastValue(std::sync::Mutex<Option<(std::sync::Arc<str>, HeaderValue)>>);

impl LastValue {
    /// `text` as a header value (`None` if it cannot be one).
    pub fn of(&self, text: &std::sync::Arc<str>) -> Option<HeaderValue> {
        let mut last = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*last {
            Some((built_from, value)) if built_from == text => Some(value.clone()),
            _ => {
                let value = HeaderValue::from_str(text).ok()?;
                *last = Some((text.clone(), value.clone()));
                Some(value)
            }
        }
    }
}

/// Removes every header whose name `doomed` says, without allocating when
/// there is none (the common case).
fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(&str) -> bool) {
    if !headers.keys().any(|name| doomed(name.as_str())) {
        return;
    }
    let names: Vec<HeaderName> = headers.keys().filter(|name| doomed(name.as_str())).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}

/// `name == target`, any case, `_` read as `-` on both sides.
fn same_name(name: &str, target: &str) -> bool {
    name.len() == target.len() && starts_with_name(name, target)
}

/// `name.starts_with(prefix)`, any case, `_` read as `-` on both sides.
fn starts_with_name(name: &str, prefix: &str) -> bool {
    let fold = |b: u8| if b == b'_' { b'-' } else { b.to_ascii_lowercase() };
    name.len() >= prefix.len() && name.bytes().zip(prefix.bytes()).all(|(n, p)| fold(n) == fold(p))
}

#[cfg(test)]
mod tests;
