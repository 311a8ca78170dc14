use super::*;

fn map(pairs: &[(&str, &str)]) -> HeaderMap {
    pairs
        .iter()
        .map(|(k, v)| (HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap()))
        .collect()
}

fn names(h: &HeaderMap) -> Vec<&str> {
    let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
    left.sort_unstable();
    left.dedup();
    left
}

const STRICT: Hygiene = Hygiene { keep_upgrade: false, allow_underscores: false };

#[test]
fn spoofable_hop_by_hop_and_override_headers_are_removed() {
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
        ("http2-settings", "AAMAAABkAAQAAP__"),
        ("x-http-method-override", "DELETE"),
        ("X-HTTP-Method", "DELETE"),
        ("x-method-override", "DELETE"),
        ("X-Original-URL", "/admin"),
        ("x-rewrite-url", "/admin"),
        ("X-Real-IP", "10.0.0.1"),
        ("true-client-ip", "10.0.0.1"),
        ("X-MS-CLIENT-PRINCIPAL-NAME", "admin@contoso"),
        ("x-ms-token-aad-access-token", "t"),
        ("x-auth-request-email", "admin@contoso"),
        ("x-arr-clientcert", "MII..."),
        ("ssl-client-cert", "MII..."),
        ("remote-user", "admin"),
        ("authorization", "Bearer t"),
        ("Expect", "100-continue"),
        ("x-app", "kept"),
    ]);
    sanitize_request(&mut h, STRICT);
    assert_eq!(names(&h), ["authorization", "x-app"]);
}

#[test]
fn mixed_separators_are_the_same_name() {
    // Each of these reaches a CGI/WSGI app as the variable of a header the sidecar owns.
    let disguised = [
        "x-spiffe_caller_id",
        "x_spiffe-caller-id",
        "x-spiffe-caller_id",
        "x-forwarded_for",
        "x_forwarded-proto",
        "x-request_id",
        "x_forwarded_client_cert",
        "x_http_method_override",
        "x-http_method",
        "x_method-override",
    ];
    for allow_underscores in [false, true] {
        for name in disguised {
            let mut h = map(&[(name, "spoofed"), ("x-app", "kept")]);
            sanitize_request(&mut h, Hygiene { keep_upgrade: false, allow_underscores });
            assert_eq!(names(&h), ["x-app"], "{name} (allow_underscores: {allow_underscores})");
        }
    }
    // A hop-by-hop header named in `Connection` with the other separator is still its name.
    let mut h = map(&[("connection", "x_hop_secret"), ("x-hop-secret", "1"), ("x-app", "kept")]);
    strip_hop_by_hop(&mut h, false);
    assert_eq!(names(&h), ["x-app"]);
}

#[test]
fn underscore_names_are_dropped_unless_allowed() {
    let pairs = [("x_custom", "1"), ("my_header", "2"), ("content_length", "9"), ("x-ok", "3")];
    let mut strict = map(&pairs);
    sanitize_request(&mut strict, STRICT);
    assert_eq!(names(&strict), ["x-ok"]);
    let mut allowed = map(&pairs);
    sanitize_request(&mut allowed, Hygiene { keep_upgrade: false, allow_underscores: true });
    // Allowed, except one that maps onto a framing header.
    assert_eq!(names(&allowed), ["my_header", "x-ok", "x_custom"]);
}

#[test]
fn trailers_lose_the_same_names() {
    let mut t = map(&[
        ("x-spiffe-caller-id", "x"),
        ("x_spiffe_caller_id", "y"),
        ("x-http-method-override", "DELETE"),
        ("x-checksum", "ok"),
        ("x_under", "1"),
    ]);
    sanitize_trailers(&mut t, false);
    assert_eq!(names(&t), ["x-checksum"]);
}

#[test]
fn only_a_single_websocket_token_on_get_is_an_upgrade() {
    let ws = [("connection", "Upgrade"), ("upgrade", "websocket"), ("sec-websocket-key", "k")];
    let get = |pairs: &[(&str, &str)]| websocket_upgrade(&Method::GET, Version::HTTP_11, &map(pairs));
    assert!(get(&ws));
    assert!(get(&[("connection", "keep-alive, upgrade"), ("upgrade", "WebSocket")]));
    assert!(!websocket_upgrade(&Method::POST, Version::HTTP_11, &map(&ws)), "POST");
    assert!(!websocket_upgrade(&Method::GET, Version::HTTP_10, &map(&ws)), "HTTP/1.0");
    assert!(!get(&[("connection", "Upgrade, HTTP2-Settings"), ("upgrade", "h2c"), ("http2-settings", "AAMA")]));
    assert!(!get(&[("connection", "upgrade"), ("upgrade", "websocket, h2c")]), "two tokens");
    assert!(!get(&[("connection", "upgrade"), ("upgrade", "websocket"), ("upgrade", "h2c")]), "two headers");
    assert!(!get(&[("upgrade", "websocket")]), "no Connection: upgrade");

    let mut h = map(&ws);
    sanitize_request(&mut h, Hygiene { keep_upgrade: true, allow_underscores: false });
    assert_eq!(h.get("upgrade").unwrap(), "websocket");
    assert_eq!(h.get("connection").unwrap(), "upgrade");
    assert!(h.contains_key("sec-websocket-key"));
}

#[test]
fn a_refused_upgrade_loses_its_headers() {
    let mut h = map(&[
        ("connection", "Upgrade, HTTP2-Settings"),
        ("upgrade", "h2c"),
        ("http2-settings", "AAMAAABkAAQAAP__"),
        ("x-app", "kept"),
    ]);
    sanitize_request(&mut h, STRICT);
    assert_eq!(names(&h), ["x-app"]);
    assert!(switches_to_websocket(&map(&[("upgrade", "websocket")])));
    assert!(!switches_to_websocket(&map(&[("upgrade", "h2c")])));
    assert!(!switches_to_websocket(&HeaderMap::new()));
}

#[test]
fn a_method_override_in_the_query_is_removed() {
    for (query, kept) in [
        ("a=1&b=2", "a=1&b=2"),
        ("_method=DELETE", ""),
        ("a=1&_method=DELETE&b=2", "a=1&b=2"),
        ("a=1&%5Fmethod=DELETE", "a=1"),
        ("a=1&_METHOD=put", "a=1"),
        ("method=x&my_method=y", "method=x&my_method=y"),
        ("q=%20space", "q=%20space"),
    ] {
        assert_eq!(without_method_override(query), kept, "{query}");
    }
}

#[test]
fn a_last_value_follows_the_text_it_is_asked_for() {
    let last = LastValue::default();
    let text = |s: &str| std::sync::Arc::<str>::from(s);
    let of = |t: &str| last.of(&text(t)).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(of("00000000-0000-4000-8000-0000000000a1").as_deref(), Some("00000000-0000-4000-8000-0000000000a1"));
    assert_eq!(of("00000000-0000-4000-8000-0000000000a1").as_deref(), Some("00000000-0000-4000-8000-0000000000a1"));
    assert_eq!(
        of("00000000-0000-4000-8000-0000000000b2").as_deref(),
        Some("00000000-0000-4000-8000-0000000000b2"),
        "changed"
    );
    assert_eq!(of("bad\nvalue"), None);
    assert_eq!(of("00000000-0000-4000-8000-0000000000b2").as_deref(), Some("00000000-0000-4000-8000-0000000000b2"));
}
