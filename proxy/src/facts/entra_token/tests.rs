use std::time::{SystemTime, UNIX_EPOCH};

use certs::dev::JwtKey;
use serde_json::json;

use super::*;
use crate::cmd::dev_idp::{AppRegistration, DevIdp};

/// The dev IdP, trusting a service-account issuer, and `EntraTokens` that
/// exchange that issuer's token.
async fn setup() -> (tempfile::TempDir, Arc<DevIdp>, Arc<EntraTokens>, tokio::task::JoinHandle<()>) {
    let dir = tempfile::tempdir().unwrap();
    let (idp, _, task) = crate::cmd::dev_idp::start(&dir.path().join("idp")).await.unwrap();
    let key = JwtKey::generate().unwrap();
    idp.trust_assertion_keys(json!({"keys": [key.jwk().unwrap()]}).to_string().as_bytes()).unwrap();
    idp.register_app("client", AppRegistration { oid: "oid".into(), roles: vec![] });
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let assertion =
        key.sign(&json!({"iss": "https://k8s.example", "sub": "sa", "aud": ["api://AzureADTokenExchange"], "exp": now + 600, "iat": now})).unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, assertion).unwrap();
    let section = EntraSection {
        client_id: "client".into(),
        tenant_id: "tenant".into(),
        authority: idp.authority(),
        graph_endpoint: idp.authority(),
        assertion: AssertionSource::File(file),
    };
    let tokens = EntraTokens::new(&section, HttpClient::new().unwrap());
    (dir, idp, tokens, task)
}

#[tokio::test]
async fn any_expires_in_is_survived_and_bounded() {
    let (_dir, idp, tokens, _task) = setup().await;
    for (i, expires_in) in [
        json!(u64::MAX),
        json!("18446744073709551615"),
        json!("99999999999999999999"),
        json!(-5),
        json!(1e300),
        json!(null),
    ]
    .into_iter()
    .enumerate()
    {
        idp.set_token_expires_in(expires_in.clone());
        let scope = format!("api://s{i}/.default");
        assert!(tokens.token(&scope).await.is_ok(), "{expires_in}");
        // Cached: a second call runs no exchange.
        let before = tokens.exchanges();
        assert!(tokens.token(&scope).await.is_ok(), "{expires_in}");
        assert_eq!(tokens.exchanges(), before, "{expires_in}");
    }
    assert_eq!(lifetime(Some(&json!(u64::MAX))), MAX_LIFETIME);
    assert_eq!(lifetime(Some(&json!("3599"))), Duration::from_secs(3599));
    assert_eq!(lifetime(Some(&json!("x"))), DEFAULT_LIFETIME);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_exchange_holds_only_its_own_scope() {
    let (_dir, idp, tokens, _task) = setup().await;
    idp.hold_scope("api://slow/.default", true);
    let slow = {
        let tokens = tokens.clone();
        tokio::spawn(async move { tokens.token("api://slow/.default").await.map(|_| ()).map_err(|e| e.to_string()) })
    };
    let also_slow = {
        let tokens = tokens.clone();
        tokio::spawn(async move { tokens.token("api://slow/.default").await.map(|_| ()).map_err(|e| e.to_string()) })
    };
    let in_flight = || async { (idp.held_requests() == 1).then_some(()) };
    certs::dev::eventually(Duration::from_secs(10), "the slow exchange reached the IdP", in_flight).await;
    // Another scope is served while the first exchange hangs.
    let fast = tokio::time::timeout(Duration::from_secs(10), tokens.token("api://fast/.default")).await;
    assert!(matches!(fast, Ok(Ok(_))), "the other scope waited behind the slow one");
    assert!(!slow.is_finished() && !also_slow.is_finished());
    idp.hold_scope("api://slow/.default", false);
    assert_eq!(slow.await.unwrap(), Ok(()));
    assert_eq!(also_slow.await.unwrap(), Ok(()));
    // The two requests for the slow scope shared one exchange (plus one for the fast scope).
    assert_eq!(tokens.exchanges(), 2);
}
