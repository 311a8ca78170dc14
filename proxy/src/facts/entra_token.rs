//! The sidecar's own Entra tokens: OAuth client credentials with a federated
//! client assertion (a projected service-account token re-read for every
//! exchange, or a JWT-SVID), cached per scope until shortly before expiry.
//! Concurrent requests for one scope share one exchange; scopes never wait
//! for each other.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::http::{FetchError, HttpClient};
use crate::config::{AssertionSource, EntraSection};

/// Tokens are renewed this long before they expire.
const RENEW_BEFORE: Duration = Duration::from_secs(60);
/// A token is never kept longer than this, whatever `expires_in` says
/// (Entra issues 60-90 minutes; a hostile or broken endpoint may say anything).
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// When `expires_in` is missing or unreadable.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// Scopes are configured (routes, Graph), so this is generous.
const MAX_SCOPES: u64 = 1024;

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

/// A token and how long it may be used.
#[derive(Clone)]
struct Token {
    value: Arc<str>,
    use_for: Duration,
}

/// Each token expires from the cache at its own time.
struct UseFor;

impl moka::Expiry<String, Token> for UseFor {
    fn expire_after_create(&self, _scope: &String, token: &Token, _created: Instant) -> Option<Duration> {
        Some(token.use_for)
    }
}

pub struct EntraTokens {
    token_url: String,
    client_id: String,
    assertion: AssertionSource,
    http: HttpClient,
    cache: moka::future::Cache<String, Token>,
    exchanges: std::sync::atomic::AtomicU64,
}

impl EntraTokens {
    pub fn new(section: &EntraSection, http: HttpClient) -> Arc<Self> {
        Arc::new(Self {
            token_url: format!("{}/{}/oauth2/v2.0/token", section.authority, section.tenant_id),
            client_id: section.client_id.clone(),
            assertion: section.assertion.clone(),
            http,
            cache: moka::future::Cache::builder().max_capacity(MAX_SCOPES).expire_after(UseFor).build(),
            exchanges: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// How many exchanges ran (tests, metrics).
    pub fn exchanges(&self) -> u64 {
        self.exchanges.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// An access token for `scope` (e.g. `https://graph.microsoft.com/.default`).
    pub async fn token(&self, scope: &str) -> Result<Arc<str>, Arc<TokenError>> {
        let token = self.cache.try_get_with_by_ref(scope, self.exchange(scope)).await?;
        Ok(token.value)
    }

    async fn exchange(&self, scope: &str) -> Result<Token, TokenError> {
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
        let value: Arc<str> = json.get("access_token").and_then(|v| v.as_str()).ok_or(TokenError::NoToken)?.into();
        Ok(Token { value, use_for: lifetime(json.get("expires_in")).saturating_sub(RENEW_BEFORE) })
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

/// `expires_in` (seconds, a number or, from Entra's v1 endpoint, a string),
/// capped at [`MAX_LIFETIME`].
fn lifetime(expires_in: Option<&serde_json::Value>) -> Duration {
    let seconds = match expires_in {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    };
    seconds.map_or(DEFAULT_LIFETIME, |s| Duration::from_secs(s).min(MAX_LIFETIME))
}

#[cfg(test)]
#[cfg(feature = "dev")]
mod tests;
