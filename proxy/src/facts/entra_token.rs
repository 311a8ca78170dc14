//! The sidecar's own Entra tokens: OAuth client credentials with a federated
//! client assertion (a projected service-account token re-read for every
//! exchange, or a JWT-SVID), cached per scope until shortly before expiry.
//! One exchange runs at a time; requests waiting for it share its result.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use super::http::{FetchError, HttpClient};
use crate::config::{AssertionSource, EntraSection};

/// Tokens are renewed this long before they expire.
const RENEW_BEFORE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the federated token file `{path}`: {source}")]
    Assertion { path: std::path::PathBuf, source: std::io::Error },
    #[error("jwt-svid: {0}")]
    JwtSvid(String),
    #[error("token endpoint: {0}")]
    Endpoint(FetchError),
    #[error("token endpoint answered without an access token")]
    NoToken,
}

pub struct EntraTokens {
    token_url: String,
    client_id: String,
    assertion: AssertionSource,
    http: HttpClient,
    cache: Mutex<HashMap<String, (Arc<str>, Instant)>>,
    exchanges: std::sync::atomic::AtomicU64,
}

impl EntraTokens {
    pub fn new(section: &EntraSection, http: HttpClient) -> Arc<Self> {
        Arc::new(Self {
            token_url: format!("{}/{}/oauth2/v2.0/token", section.authority, section.tenant_id),
            client_id: section.client_id.clone(),
            assertion: section.assertion.clone(),
            http,
            cache: Mutex::new(HashMap::new()),
            exchanges: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// How many exchanges ran (tests, metrics).
    pub fn exchanges(&self) -> u64 {
        self.exchanges.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// An access token for `scope` (e.g. `https://graph.microsoft.com/.default`).
    pub async fn token(&self, scope: &str) -> Result<Arc<str>, TokenError> {
        let mut cache = self.cache.lock().await;
        if let Some((token, until)) = cache.get(scope).filter(|(_, until)| Instant::now() < *until) {
            let _ = until;
            return Ok(token.clone());
        }
        let assertion = self.assertion().await?;
        self.exchanges.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let fields = [
            ("client_id", self.client_id.as_str()),
            ("scope", scope),
            ("grant_type", "client_credentials"),
            ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
            ("client_assertion", assertion.as_str()),
        ];
        let body = self.http.post_form(&self.token_url, &fields).await.map_err(TokenError::Endpoint)?;
        let json: serde_json::Value = serde_json::from_slice(&body).map_err(|_| TokenError::NoToken)?;
        let token: Arc<str> = json.get("access_token").and_then(|v| v.as_str()).ok_or(TokenError::NoToken)?.into();
        let lifetime = Duration::from_secs(json.get("expires_in").and_then(|v| v.as_u64()).unwrap_or(300));
        let until = Instant::now() + lifetime.saturating_sub(RENEW_BEFORE);
        cache.insert(scope.to_owned(), (token.clone(), until));
        Ok(token)
    }

    /// The client assertion, fresh for each exchange.
    async fn assertion(&self) -> Result<String, TokenError> {
        match &self.assertion {
            AssertionSource::File(path) => tokio::fs::read_to_string(path)
                .await
                .map(|t| t.trim().to_owned())
                .map_err(|source| TokenError::Assertion { path: path.clone(), source }),
            AssertionSource::JwtSvid { endpoint, audience } => {
                let client = spiffe::WorkloadApiClient::connect_to(endpoint)
                    .await
                    .map_err(|e| TokenError::JwtSvid(e.to_string()))?;
                let svid = client
                    .fetch_jwt_svid([audience.as_str()], None)
                    .await
                    .map_err(|e| TokenError::JwtSvid(e.to_string()))?;
                Ok(svid.token().to_owned())
            }
        }
    }
}
