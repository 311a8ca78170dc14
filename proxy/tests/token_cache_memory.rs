//! The verified-token cache's byte budget is what it really holds: distinct
//! valid tokens (every caller's, or one caller minting many) fill it, and
//! the process's private memory grows by about what the entries weigh, not
//! a multiple of it (as `policy/tests/cache_memory.rs` shows for the
//! decision cache). Its own test binary, one test: nothing else allocates
//! meanwhile.

#![cfg(all(target_os = "linux", feature = "dev"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::sync::Arc;

use certs::dev::JwtKey;
use jsonwebtoken::{Algorithm, Header};
use policy::jwt::{KeySet, unix_now};
use proxy::config::{Config, MapEnv};
use proxy::facts::jwks::Jwks;
use proxy::layers::oauth::{CACHE_BYTES, Oauth};
use proxy::observe::metrics::Metrics;
use serde_json::{Value, json};

/// `RssAnon` (heap and stacks) of this process, in bytes.
fn private_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

/// The smallest token the issuer accepts (the most entries per byte: the
/// fixed overhead dominates), and one shaped like an Entra access token
/// (a dozen string claims, roles; the bench's is 918 bytes).
fn claims(shape: &str, n: u32) -> Value {
    let exp = unix_now() + 3_600;
    match shape {
        "minimal" => json!({"iss": "https://i.example", "aud": "a", "exp": exp, "jti": n.to_string()}),
        _ => json!({
            "iss": "https://i.example", "aud": "a", "exp": exp, "iat": exp - 3_600, "nbf": exp - 3_600,
            "aio": "E2RgYJh0cVqT6uVFp7/TfXiLzq8fAwA=", "azp": "11111111-2222-3333-4444-555555555555",
            "azpacr": "2", "idp": "https://sts.windows.net/00000000-0000-0000-0000-000000000000/",
            "name": "budget-report agent", "oid": format!("00000000-0000-0000-0000-{n:012}"),
            "rh": "0.AXkA5e7mE2RgYJh0cVqT6uVFp7_TfXiLzq8fAwAAAAAAAAB5AAA.",
            "sub": format!("00000000-0000-0000-0000-{n:012}"), "tid": "00000000-0000-0000-0000-000000000000",
            "uti": format!("uti-{n:08}-ZmFrZS11dGk"), "ver": "2.0",
            "roles": ["Budget.Read", "Budget.Write", "Reports.Read"],
        }),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn distinct_tokens_hold_about_what_their_entries_weigh() {
    let config = Config::parse(
        std::path::Path::new("t.yaml"),
        "identity: {socket: unix:///x}\njwt: {issuers: [{name: i, issuer: 'https://i.example', audiences: [a], algorithms: [ES256]}]}",
        &MapEnv::default(),
    )
    .unwrap();
    let section = config.jwt.unwrap();
    let metrics = Arc::new(Metrics::new().unwrap());
    let key = JwtKey::generate_for(Algorithm::ES256).unwrap();
    let keys = || KeySet::from_jwks(json!({"keys": [key.jwk().unwrap()]}).to_string().as_bytes()).unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(key.kid().to_owned());

    let before = private_bytes();
    let (mut validators, mut weighed_all) = (Vec::new(), 0);
    for shape in ["minimal", "entra-like"] {
        let oauth = Oauth::new(&section, vec![Jwks::offline(Some(keys()), metrics.clone())]);
        let mut token_bytes = 0;
        // More distinct tokens than the budget holds; each dropped once
        // verified, so only the cache's copy stays.
        for n in 0..12_000 {
            let token = key.sign_with_header(&header, &claims(shape, n)).unwrap();
            token_bytes = token.len();
            let verified = oauth.verify(token.as_bytes()).await;
            assert!(verified.is_ok(), "{shape} token {n}: {:?}", verified.err().map(|e| e.detail));
        }
        let (entries, weighed) = oauth.cache_usage();
        assert!(weighed <= CACHE_BYTES, "{shape}: {weighed}");
        assert!(entries > 2_000, "{shape}: the cache still remembers tokens: {entries}");
        weighed_all += weighed;
        // Every cache filled so far is still held, so the growth is theirs.
        validators.push(oauth);
        let grown = private_bytes().saturating_sub(before);
        eprintln!(
            "{shape} ({token_bytes}-byte tokens): {entries} entries weigh {weighed} bytes ({} each); \
             all caches so far weigh {weighed_all}, private memory +{grown}",
            weighed / entries.max(1)
        );
        assert!(
            grown <= weighed_all + weighed_all / 10 + (1 << 20),
            "{shape}: the entries weigh {weighed_all} bytes and hold {grown}"
        );
    }
}
