//! The per-request decision path with warm caches, layers 1 to 4: the
//! allow-list and certificate-expiry check, path canonicalisation, Layer 2
//! (reference policy), Layer 3 (a valid RS256 token, verified once and then
//! served from the token cache), and Layers 4a/4b from local facts. No sockets: this is the CPU the
//! layers add to a request.
//!
//!     cargo bench -p proxy --bench pipeline

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "bench")]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use certs::SpiffeId;
use certs::dev::JwtKey;
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use policy::jwt::KeySet;
use policy::{CanonicalPath, PathOptions};
use proxy::config::{JwtSection, MapEnv, PolicyConfig, PolicyMode};
use proxy::facts::http::HttpClient;
use proxy::facts::jwks::{Jwks, JwksSettings};
use proxy::layers::allowlist::AllowList;
use proxy::layers::governance::Governor;
use proxy::layers::oauth::Oauth;
use proxy::layers::pipeline::{self, RequestFacts};
use proxy::layers::rbac::{Loaded, load};
use proxy::observe::metrics::Metrics;

const TENANT: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const CALLER: &str = "spiffe://aim.microsoft.com/ests/bp/b1/aid/budget-report";
const OID: &str = "00000000-0000-4000-8000-0000000000a1";

fn bench(c: &mut Criterion) {
    certs::crypto::install_default_provider();
    let dir = tempfile::tempdir().unwrap();
    let policy_file = dir.path().join("policy.yaml");
    std::fs::write(&policy_file, include_str!("../../examples/reference-policy/spiffe-rbac-policy.yaml")).unwrap();
    let mut env = MapEnv::default().with("ENTRA_ID_BUDGET_REPORT", OID).with("ENTRA_ID_BUDGET_APPROVAL", OID);
    for name in ["BUDGET_REPORT", "EMPLOYEE_MENUS", "BUDGET_APPROVAL", "ADMIN_CONTROL_PLANE"] {
        let id = name.to_ascii_lowercase().replace('_', "-");
        env = env.with(&format!("SPIFFE_PREFIX_{name}"), &format!("spiffe://aim.microsoft.com/ests/bp/b1/aid/{id}"));
    }
    env = env
        .with("SPIFFE_ID_GOOGLE_BUDGET_READER", "spiffe://gcp.aim.microsoft.com/g")
        .with("ENTRA_ID_GOOGLE_BUDGET_READER", OID)
        .with("SPIFFE_ID_GITHUB_BUDGET_READER", "spiffe://aim.microsoft.com/gh")
        .with("ENTRA_ID_GITHUB_BUDGET_READER", OID);
    let jwt = JwtSection {
        entra: Some(proxy::config::EntraIssuer {
            tenant_id: TENANT.into(),
            audiences: vec!["api://budget-backend".into()],
            authority: "https://login.microsoftonline.com".into(),
        }),
        issuers: vec![],
        leeway: Duration::from_secs(60),
        allow_unbound_tokens: false,
        require_bound_tokens: false,
        refresh: Duration::from_secs(3600),
        refetch_interval: Duration::from_secs(300),
    };
    let policy =
        PolicyConfig { file: policy_file, cedar: vec![], mode: PolicyMode::Enforce, case_insensitive_paths: false };
    let (engine, _) = load(&policy, &env, Some(&jwt)).unwrap();
    let loaded = Loaded::new(engine, PolicyMode::Enforce, 1);

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _guard = runtime.enter();
    let metrics = Arc::new(Metrics::new().unwrap());
    let settings = JwksSettings {
        name: Arc::from("entra"),
        at: proxy::facts::jwks::KeysAt::Jwks("https://unused.invalid/".into()),
        refresh: jwt.refresh,
        refetch_interval: jwt.refetch_interval,
    };
    let jwks = Jwks::new(settings, HttpClient::new().unwrap(), metrics.clone());
    let key = JwtKey::generate().unwrap();
    jwks.set_keys(KeySet::from_jwks(serde_json::json!({"keys": [key.jwk().unwrap()]}).to_string().as_bytes()).unwrap());
    let oauth = Oauth::new(&jwt, vec![jwks]);
    let config =
        proxy::config::Config::parse(std::path::Path::new("bench.yaml"), "identity: {socket: unix:///x}", &env)
            .unwrap();
    let governor = Governor::new(config.risk, config.tags, None, Default::default());
    // The sample's target tag is `finance`, and budget-report carries it.

    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    let token = key
        .sign(&serde_json::json!({
            "aud": "api://budget-backend", "iss": format!("https://login.microsoftonline.com/{TENANT}/v2.0"),
            "tid": TENANT, "oid": OID, "azp": "client", "roles": ["Budget.Read"], "exp": now + 3600, "nbf": now, "iat": now,
        }))
        .unwrap();
    let mut headers = hyper::HeaderMap::new();
    headers.insert(hyper::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    let allowlist = AllowList::new(vec!["spiffe://aim.microsoft.com/ests/bp/*/aid/*".parse().unwrap()]);
    let caller: SpiffeId = CALLER.parse().unwrap();
    let not_after = SystemTime::now() + Duration::from_secs(3600);

    let mut run = || {
        assert!(allowlist.allows(&caller) && SystemTime::now() < not_after);
        let path = CanonicalPath::parse("/budget/read", PathOptions::default()).unwrap();
        let facts = RequestFacts {
            caller: &caller,
            method: "GET",
            path: &path,
            headers: &headers,
            leaf_sha256: Some(""),
            asserted: None,
            request_id: None,
        };
        // Warm caches: nothing awaits, so the future completes on first poll.
        let mut trace = pipeline::Trace::default();
        let result = pipeline::evaluate(&loaded, Some(&oauth), &governor, None, facts, Some(&metrics), &mut trace)
            .now_or_never();
        assert_eq!(result, Some(Ok(())));
    };
    run(); // warms the decision and token caches (one RSA verification)
    c.bench_function("layers 1-4, reference policy, cached valid JWT", |b| b.iter(&mut run));

    c.bench_function("RS256 verification alone (a token cache miss)", |b| {
        let keys = KeySet::from_jwks(serde_json::json!({"keys": [key.jwk().unwrap()]}).to_string().as_bytes()).unwrap();
        let config = oauth.issuers().first().unwrap().config.clone();
        b.iter(|| policy::jwt::verify(&token, &keys, &config, now).unwrap().unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
