//! Inbound header hygiene: whatever a caller sends, the app never receives
//! an identity, forwarding, request-ID, method-override or hop-by-hop header
//! (names compared with `_` read as `-`, any case), nor a name with `_`
//! unless allowed, nor an `Upgrade` other than a single `websocket` on an
//! HTTP/1.1 GET. The property is written from the contract, not from the
//! implementation's own lists.
#![no_main]

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Version};
use libfuzzer_sys::fuzz_target;
use proxy::dataplane::headers::{Hygiene, sanitize_request, websocket_upgrade};

/// Lower case, `_` read as `-`: how CGI/WSGI servers fold header names.
fn folded(name: &str) -> String {
    name.bytes().map(|b| if b == b'_' { '-' } else { char::from(b.to_ascii_lowercase()) }).collect()
}

fn owned_by_the_sidecar(folded: &str) -> bool {
    folded.starts_with("x-spiffe-")
        || folded.starts_with("x-forwarded-")
        || matches!(
            folded,
            "forwarded"
                | "x-request-id"
                | "x-forwarded-client-cert"
                | "x-http-method-override"
                | "x-http-method"
                | "x-method-override"
                | "x-original-url"
                | "x-rewrite-url"
                | "x-real-ip"
                | "true-client-ip"
                | "http2-settings"
                | "keep-alive"
                | "proxy-connection"
                | "te"
                | "trailer"
                | "transfer-encoding"
                | "proxy-authenticate"
                | "proxy-authorization"
        )
}

fuzz_target!(|input: (Vec<(Vec<u8>, Vec<u8>)>, u8, bool, bool)| {
    let (pairs, method, http11, allow_underscores) = input;
    let method = [Method::GET, Method::POST, Method::PUT, Method::DELETE][usize::from(method % 4)].clone();
    let version = if http11 { Version::HTTP_11 } else { Version::HTTP_10 };
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(&name), HeaderValue::from_bytes(&value)) {
            headers.append(name, value);
        }
    }
    let upgrade = websocket_upgrade(&method, version, &headers);
    sanitize_request(&mut headers, Hygiene { keep_upgrade: upgrade, allow_underscores });

    for name in headers.keys() {
        let folded = folded(name.as_str());
        assert!(!owned_by_the_sidecar(&folded), "{name} reached the app");
        assert!(allow_underscores || !name.as_str().contains('_'), "{name} reached the app");
        if folded == "upgrade" || folded == "connection" {
            assert!(upgrade && (name == "upgrade" || name == "connection"), "{name} reached the app");
        }
    }
    if upgrade {
        assert!(method == Method::GET && version == Version::HTTP_11);
        let values: Vec<&HeaderValue> = headers.get_all("upgrade").iter().collect();
        assert_eq!(values.len(), 1);
        assert!(values[0].as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"), "{:?}", values[0]);
        assert_eq!(headers.get("connection").map(HeaderValue::as_bytes), Some(&b"upgrade"[..]));
    }
});
