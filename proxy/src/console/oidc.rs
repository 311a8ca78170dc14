//! Operators sign in with OpenID Connect: the authorization code flow with
//! PKCE (S256), as a public client (no secret anywhere). The ID token is
//! verified against the issuer's JWKS (RS256; `iss`, `aud` = our client ID,
//! `exp`, and the `nonce` of this sign-in), and the role comes from a
//! configured claim: `admin` if any value is in `oidc.admin`, else `viewer`
//! if any is in `oidc.viewer`, else the person is refused.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use super::random_token;
use crate::config::{OidcSettings, Role};
use crate::facts::http::HttpClient;
use crate::facts::jwks::{Jwks, JwksSettings};
use crate::observe::metrics::Metrics;

/// Where the issuer's endpoints are (its discovery document).
#[derive(Debug, Clone)]
struct Endpoints {
    authorization: String,
    token: String,
}

/// A sign-in under way: what the callback must match.
#[derive(Debug, Clone)]
pub struct Pending {
    pub verifier: String,
    pub nonce: String,
}

/// Who signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error("the identity provider is unavailable: {0}")]
    Unavailable(String),
    #[error("the identity provider refused the code: {0}")]
    Refused(String),
    #[error("the ID token is not valid: {0}")]
    BadToken(String),
    #[error("{0} has no console role (claim `{1}`)")]
    NoRole(String, String),
}

pub struct Oidc {
    settings: OidcSettings,
    redirect_uri: String,
    http: HttpClient,
    jwks: Arc<Jwks>,
    endpoints: tokio::sync::OnceCell<Endpoints>,
}

impl Oidc {
    pub fn new(settings: OidcSettings, redirect_uri: String, http: HttpClient, metrics: Arc<Metrics>) -> Self {
        let jwks = Jwks::new(
            JwksSettings {
                name: Arc::from("console"),
                at: crate::facts::jwks::KeysAt::Discovery {
                    url: format!("{}/.well-known/openid-configuration", settings.issuer),
                    issuer: None,
                },
                refresh: std::time::Duration::from_secs(3600),
                refetch_interval: std::time::Duration::from_secs(60),
            },
            http.clone(),
            metrics,
        );
        Self { settings, redirect_uri, http, jwks, endpoints: tokio::sync::OnceCell::new() }
    }

    async fn endpoints(&self) -> Result<&Endpoints, SignInError> {
        self.endpoints
            .get_or_try_init(|| async {
                let url = format!("{}/.well-known/openid-configuration", self.settings.issuer);
                let body = self.http.get(&url).await.map_err(|e| SignInError::Unavailable(e.to_string()))?;
                let doc: Value = serde_json::from_slice(&body).map_err(|e| SignInError::Unavailable(e.to_string()))?;
                let endpoint = |name: &str| {
                    let url = doc
                        .get(name)
                        .and_then(Value::as_str)
                        .ok_or_else(|| SignInError::Unavailable(format!("the discovery document has no `{name}`")))?;
                    crate::config::identity_endpoint(url).map_err(SignInError::Unavailable)?;
                    Ok::<_, SignInError>(url.to_owned())
                };
                Ok(Endpoints { authorization: endpoint("authorization_endpoint")?, token: endpoint("token_endpoint")? })
            })
            .await
    }

    /// Where to send the browser, and what its callback must match. `state`
    /// is the key the caller keeps the [`Pending`] under.
    pub async fn begin(&self, state: &str) -> Result<(String, Pending), SignInError> {
        let endpoints = self.endpoints().await?;
        let pending = Pending { verifier: random_token(), nonce: random_token() };
        let challenge = URL_SAFE_NO_PAD
            .encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, pending.verifier.as_bytes()).as_ref());
        let query = crate::facts::http::form_encode(&[
            ("response_type", "code"),
            ("client_id", self.settings.client_id.as_str()),
            ("redirect_uri", self.redirect_uri.as_str()),
            ("scope", "openid profile"),
            ("state", state),
            ("nonce", pending.nonce.as_str()),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ]);
        let separator = if endpoints.authorization.contains('?') { '&' } else { '?' };
        Ok((format!("{}{separator}{query}", endpoints.authorization), pending))
    }

    /// Exchanges the callback's `code`, verifies the ID token, and says who it is.
    pub async fn finish(&self, code: &str, pending: &Pending) -> Result<Person, SignInError> {
        let endpoints = self.endpoints().await?;
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("client_id", self.settings.client_id.as_str()),
            ("redirect_uri", self.redirect_uri.as_str()),
            ("code_verifier", pending.verifier.as_str()),
        ];
        let body =
            self.http.post_form(&endpoints.token, &form).await.map_err(|e| SignInError::Refused(e.to_string()))?;
        let answer: Value = serde_json::from_slice(&body).map_err(|e| SignInError::Refused(e.to_string()))?;
        let token =
            answer.get("id_token").and_then(Value::as_str).ok_or_else(|| SignInError::Refused("no id_token".into()))?;
        let claims = self.verify(token, &pending.nonce).await?;
        self.person(&claims)
    }

    async fn verify(&self, token: &str, nonce: &str) -> Result<Value, SignInError> {
        let bad = |why: String| SignInError::BadToken(why);
        let kid = policy::jwt::kid_of(token).map_err(|e| bad(e.to_string()))?;
        let keys = match self.jwks.keys().filter(|k| k.contains(&kid)) {
            Some(keys) => Some(keys),
            None => self.jwks.refetch_for(&kid).await,
        };
        let key = keys.as_ref().and_then(|k| k.get(&kid)).ok_or_else(|| bad(format!("unknown key `{kid}`")))?;
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.set_issuer(&[self.settings.issuer.as_str()]);
        validation.set_audience(&[self.settings.client_id.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = 60;
        let data = jsonwebtoken::decode::<Value>(token, key, &validation).map_err(|e| bad(e.to_string()))?;
        if data.claims.get("nonce").and_then(Value::as_str) != Some(nonce) {
            return Err(bad("the nonce is not this sign-in's".into()));
        }
        // Issued for several audiences: it must have been issued to us (OIDC Core 3.1.3.7).
        let audiences = data.claims.get("aud").and_then(Value::as_array).map_or(1, Vec::len);
        if audiences > 1 && data.claims.get("azp").and_then(Value::as_str) != Some(self.settings.client_id.as_str()) {
            return Err(bad("several audiences and `azp` is not this console".into()));
        }
        Ok(data.claims)
    }

    /// The person's display name and console role from verified claims.
    fn person(&self, claims: &Value) -> Result<Person, SignInError> {
        let name = ["preferred_username", "email", "name", "sub"]
            .iter()
            .find_map(|c| claims.get(*c).and_then(Value::as_str))
            .unwrap_or("unknown")
            .to_owned();
        let claim = &self.settings.roles_claim;
        let found = claim.split('.').try_fold(claims, |value, part| value.get(part));
        let values: Vec<&str> = match found {
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            Some(Value::String(text)) => text.split(' ').collect(),
            _ => Vec::new(),
        };
        let has = |allowed: &[String]| values.iter().any(|v| allowed.iter().any(|a| a == v));
        let role = if has(&self.settings.admin) {
            Role::Admin
        } else if has(&self.settings.viewer) {
            Role::Viewer
        } else {
            return Err(SignInError::NoRole(name, claim.clone()));
        };
        Ok(Person { name, role })
    }
}
