//! One issuer's signing keys: OIDC discovery (or a configured `jwks_uri`),
//! then the JWKS; fetched at
//! start (retrying until it works), refreshed in the background, and
//! refetched when a token names an unknown `kid` (at most once per
//! `refetch_interval`, concurrent misses sharing one fetch). A failed fetch
//! keeps the last good keys.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use policy::jwt::KeySet;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::http::{FetchError, HttpClient};
use crate::observe::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("discovery: {0}")]
    Discovery(FetchError),
    #[error("discovery document has no `jwks_uri`")]
    NoJwksUri,
    #[error("discovery document's `jwks_uri`: {0}")]
    InsecureJwksUri(String),
    #[error("discovery document names another issuer")]
    WrongIssuer,
    #[error("jwks: {0}")]
    Keys(FetchError),
    #[error("jwks: {0}")]
    Parse(String),
    #[error("offline: the keys are the ones given")]
    Offline,
}

/// Where the keys are found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeysAt {
    /// An OpenID discovery document (`{authority}/{tenant}/v2.0/...` for
    /// Entra) whose `jwks_uri` names them; with `issuer`, the document's
    /// `issuer` must be it (OpenID Connect Discovery 4.3).
    Discovery { url: String, issuer: Option<String> },
    /// A configured `jwks_uri`.
    Jwks(String),
}

/// Where the keys come from and how often.
#[derive(Debug, Clone)]
pub struct JwksSettings {
    /// The issuer's name, for the logs.
    pub name: Arc<str>,
    pub at: KeysAt,
    pub refresh: Duration,
    pub refetch_interval: Duration,
}

/// Status for `/mgmt/oauth-status` and health.
#[derive(Debug, Clone, Default)]
pub struct JwksStatus {
    pub last_refresh: Option<SystemTime>,
    pub last_error: Option<String>,
}

pub struct Jwks {
    settings: JwksSettings,
    /// `None`: offline, the keys are the ones given (`explain`).
    client: Option<HttpClient>,
    keys: ArcSwapOption<KeySet>,
    status: ArcSwap<JwksStatus>,
    /// When an unknown `kid` last caused a fetch; the lock makes concurrent misses share one.
    last_refetch: Mutex<Option<Instant>>,
    metrics: Arc<Metrics>,
}

impl Jwks {
    pub fn new(settings: JwksSettings, client: HttpClient, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            settings,
            client: Some(client),
            keys: ArcSwapOption::empty(),
            status: ArcSwap::from_pointee(JwksStatus::default()),
            last_refetch: Mutex::new(None),
            metrics,
        })
    }

    /// Keys that are never fetched (`explain` reads them from a file): a
    /// token naming another `kid` is invalid.
    pub fn offline(keys: Option<KeySet>, metrics: Arc<Metrics>) -> Arc<Self> {
        let settings = JwksSettings {
            name: Arc::from("offline"),
            at: KeysAt::Jwks(String::new()),
            refresh: Duration::MAX,
            refetch_interval: Duration::MAX,
        };
        Arc::new(Self {
            settings,
            client: None,
            keys: ArcSwapOption::new(keys.map(Arc::new)),
            status: ArcSwap::from_pointee(JwksStatus::default()),
            last_refetch: Mutex::new(None),
            metrics,
        })
    }

    /// Installs keys obtained elsewhere (benchmarks, and a pre-loaded JWKS file).
    pub fn set_keys(&self, keys: KeySet) {
        self.keys.store(Some(Arc::new(keys)));
    }

    /// The keys in force; `None` until the first successful fetch.
    pub fn keys(&self) -> Option<Arc<KeySet>> {
        self.keys.load_full()
    }

    pub fn status(&self) -> Arc<JwksStatus> {
        self.status.load_full()
    }

    /// One fetch: discovery, then the JWKS. Success replaces the keys; a
    /// failure keeps them and is recorded.
    pub async fn fetch(&self) -> Result<(), JwksError> {
        let result = self.fetch_keys().await;
        match &result {
            Ok(keys) => {
                tracing::info!(issuer = %self.settings.name, keys = keys.len(), "jwks refreshed");
                self.keys.store(Some(Arc::new(keys.clone())));
                self.status.store(Arc::new(JwksStatus { last_refresh: Some(SystemTime::now()), last_error: None }));
                self.metrics.jwks_refresh("ok");
            }
            Err(e) => {
                tracing::warn!(issuer = %self.settings.name, error = %e, "jwks fetch failed; keeping the last good keys");
                let last_refresh = self.status.load().last_refresh;
                self.status.store(Arc::new(JwksStatus { last_refresh, last_error: Some(e.to_string()) }));
                self.metrics.jwks_refresh("error");
            }
        }
        result.map(|_| ())
    }

    async fn fetch_keys(&self) -> Result<KeySet, JwksError> {
        let client = self.client.as_ref().ok_or(JwksError::Offline)?;
        let jwks_uri = match &self.settings.at {
            KeysAt::Jwks(uri) => uri.clone(),
            KeysAt::Discovery { url, issuer } => {
                let discovery = client.get(url).await.map_err(JwksError::Discovery)?;
                let doc: serde_json::Value =
                    serde_json::from_slice(&discovery).map_err(|e| JwksError::Parse(e.to_string()))?;
                if issuer.as_ref().is_some_and(|want| doc.get("issuer").and_then(|v| v.as_str()) != Some(want)) {
                    return Err(JwksError::WrongIssuer);
                }
                let jwks_uri = doc.get("jwks_uri").and_then(|v| v.as_str()).ok_or(JwksError::NoJwksUri)?;
                // The discovery document names where the keys are: the same rule as
                // for the configured endpoints (https, plain http on loopback only).
                crate::config::identity_endpoint(jwks_uri).map_err(JwksError::InsecureJwksUri)?;
                jwks_uri.to_owned()
            }
        };
        let jwks = client.get(&jwks_uri).await.map_err(JwksError::Keys)?;
        KeySet::from_jwks(&jwks).map_err(JwksError::Parse)
    }

    /// Fetches at start until it succeeds (with backoff), then every `refresh`.
    pub async fn refresh_forever(self: Arc<Self>) {
        let mut backoff = certs::source::Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        while self.fetch().await.is_err() {
            tokio::time::sleep(backoff.next_delay()).await;
        }
        loop {
            tokio::time::sleep(self.settings.refresh).await;
            let _ = self.fetch().await;
        }
    }

    /// Called when a token names `kid` and the keys do not have it: fetches
    /// again unless that happened within `refetch_interval`. Returns the keys
    /// in force afterwards.
    pub async fn refetch_for(&self, kid: &str) -> Option<Arc<KeySet>> {
        if self.client.is_none() {
            return self.keys();
        }
        let mut last = self.last_refetch.lock().await;
        // Another request may have fetched while this one waited for the lock.
        if let Some(keys) = self.keys().filter(|k| k.contains(kid)) {
            return Some(keys);
        }
        if last.is_some_and(|at| at.elapsed() < self.settings.refetch_interval) {
            return self.keys();
        }
        *last = Some(Instant::now());
        let _ = self.fetch().await;
        self.keys()
    }
}

#[cfg(test)]
#[cfg(feature = "dev")]
mod tests {
    use super::*;

    /// A dev IdP in `dir` and a provider of its keys (refetched at most every 5 min).
    async fn from_dev_idp(
        dir: &std::path::Path,
    ) -> (Arc<crate::cmd::dev_idp::DevIdp>, Arc<Jwks>, tokio::task::JoinHandle<()>) {
        let (idp, _, task) = crate::cmd::dev_idp::start(&dir.join("idp")).await.unwrap();
        let settings = JwksSettings {
            name: Arc::from("entra"),
            at: KeysAt::Discovery {
                url: format!("{}/t/v2.0/.well-known/openid-configuration", idp.authority()),
                issuer: None,
            },
            refresh: Duration::from_secs(3600),
            refetch_interval: Duration::from_secs(300),
        };
        let jwks = Jwks::new(settings, HttpClient::new().unwrap(), Arc::new(Metrics::new().unwrap()));
        (idp, jwks, task)
    }

    #[tokio::test]
    async fn a_jwks_uri_off_loopback_must_be_https() {
        let dir = tempfile::tempdir().unwrap();
        let (idp, jwks, _task) = from_dev_idp(dir.path()).await;
        assert!(jwks.fetch().await.is_ok(), "{:?}", jwks.status());

        idp.set_jwks_uri(Some("http://keys.example/t/discovery/v2.0/keys".into()));
        let err = jwks.fetch().await.unwrap_err().to_string();
        assert!(err.contains("jwks_uri") && err.contains("https://"), "{err}");
        assert!(jwks.keys().is_some(), "the last good keys stay");
    }

    /// Concurrent misses on one new `kid` wait for the fetch in flight, then
    /// all find the key: one fetch, no request refused by the rate limit.
    #[tokio::test]
    async fn concurrent_misses_share_one_fetch() {
        use std::future::Future;

        let dir = tempfile::tempdir().unwrap();
        let (idp, jwks, _task) = from_dev_idp(dir.path()).await;
        jwks.fetch().await.unwrap();
        let before = idp.jwks_fetches();
        let kid = idp.rotate(false).unwrap();
        idp.hold_jwks(true);

        let poll_once = |f: &mut std::pin::Pin<Box<dyn Future<Output = Option<Arc<KeySet>>> + Send + '_>>| {
            let waker = std::task::Waker::noop();
            f.as_mut().poll(&mut std::task::Context::from_waker(waker)).is_pending()
        };
        let mut misses: Vec<std::pin::Pin<Box<dyn Future<Output = _> + Send + '_>>> =
            (0..10).map(|_| Box::pin(jwks.refetch_for(&kid)) as _).collect();
        // The first miss fetches (the IdP holds its answer)...
        let deadline = Instant::now() + Duration::from_secs(10);
        while idp.jwks_fetches() == before {
            assert!(poll_once(&mut misses[0]), "answered while held");
            assert!(Instant::now() < deadline, "the fetch never reached the IdP");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // ...and every other one waits for it instead of giving up on the rate limit.
        for (i, miss) in misses.iter_mut().enumerate().skip(1) {
            assert!(poll_once(miss), "miss {i} did not wait for the fetch in flight");
        }
        idp.hold_jwks(false);
        for keys in futures_util::future::join_all(misses).await {
            assert!(keys.is_some_and(|k| k.contains(&kid)), "every miss finds the new key");
        }
        assert_eq!(idp.jwks_fetches(), before + 1);
    }

    /// Any OIDC issuer: its discovery document must name it as `issuer`
    /// (else nothing is trusted from it), and an outage keeps the last good keys.
    #[tokio::test]
    async fn discovery_must_name_the_issuer_and_an_outage_keeps_the_keys() {
        use crate::cmd::dev_idp::issuer::{self, Shape};
        let (kc, _, _task) = issuer::start(Shape::Keycloak, jsonwebtoken::Algorithm::ES256).await.unwrap();
        let provider = |expected: String| {
            let discovery = format!("{}/.well-known/openid-configuration", kc.issuer());
            let settings = JwksSettings {
                name: Arc::from("keycloak"),
                at: KeysAt::Discovery { url: discovery, issuer: Some(expected) },
                refresh: Duration::from_secs(3600),
                refetch_interval: Duration::from_secs(300),
            };
            Jwks::new(settings, HttpClient::new().unwrap(), Arc::new(Metrics::new().unwrap()))
        };
        // A document that names another issuer (a hijacked or mistyped URL).
        let impostor = provider("https://sso.example/realms/agents".into());
        assert!(matches!(impostor.fetch().await, Err(JwksError::WrongIssuer)));
        assert!(impostor.keys().is_none(), "no key from a document that names another issuer");

        let jwks = provider(kc.issuer());
        jwks.fetch().await.unwrap();
        let kid = kc.key().unwrap().kid().to_owned();
        assert!(jwks.keys().is_some_and(|k| k.contains(&kid)));
        kc.set_down(true);
        assert!(jwks.fetch().await.is_err());
        assert!(jwks.keys().is_some_and(|k| k.contains(&kid)), "the last good keys stay");
        assert!(jwks.status().last_error.is_some());
    }
}
