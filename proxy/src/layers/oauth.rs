//! Layer 3 in the sidecar: the token from `Authorization: Bearer`, verified
//! against the tenant's keys, with a cache of verified tokens so a warm
//! request does not repeat the RSA verification.
//!
//! A cached token is only reused while the key that signed it is still in
//! the JWKS and it has not expired; a new `jwt` configuration builds a new
//! validator (and cache), so changed audiences or issuers apply at once.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use hyper::HeaderMap;
use hyper::header::AUTHORIZATION;
use policy::Reason;
use policy::jwt::{self, Claims, JwtConfig, JwtError};
use policy::reference::{Entry, Rule};

use crate::config::JwtSection;
use crate::facts::jwks::Jwks;

const CACHE_CAPACITY: u64 = 16_384;
/// Upper bound on how long a verified token is remembered (it is also
/// dropped at its `exp`).
const CACHE_TTL: Duration = Duration::from_secs(600);

pub struct Oauth {
    config: JwtConfig,
    allow_unbound: bool,
    jwks: Arc<Jwks>,
    cache: moka::sync::Cache<u64, Arc<Verified>>,
}

struct Verified {
    token: Box<str>,
    claims: Arc<Claims>,
}

/// The token's place in the request, for the rule and the audit event.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The rule required no token.
    NotRequired,
    Valid(Arc<Claims>),
}

impl Oauth {
    pub fn new(section: &JwtSection, jwks: Arc<Jwks>) -> Self {
        let config =
            JwtConfig::new(&section.authority, &section.tenant_id, section.audiences.clone(), section.leeway.as_secs());
        let cache = moka::sync::Cache::builder().max_capacity(CACHE_CAPACITY).time_to_live(CACHE_TTL).build();
        Self { config, allow_unbound: section.allow_unbound_tokens, jwks, cache }
    }

    pub fn config(&self) -> &JwtConfig {
        &self.config
    }

    pub fn jwks(&self) -> &Arc<Jwks> {
        &self.jwks
    }

    /// Layer 3 for a request whose matched `rule` (of `entry`) may require a token.
    pub async fn check(&self, headers: &HeaderMap, entry: &Entry, rule: &Rule) -> Result<Outcome, JwtError> {
        if !rule.require_jwt {
            return Ok(Outcome::NotRequired);
        }
        let token = bearer(headers)?;
        let claims = self.verify(token).await?;
        let bound = jwt::bound_to(&claims, entry.entra_agent_id.as_deref(), entry.entra_app_id.as_deref());
        if bound == Some(false) || (bound.is_none() && !self.allow_unbound) {
            return Err(JwtError { reason: Reason::JwtCallerMismatch, detail: "token is not the caller's" });
        }
        if !jwt::has_roles(&claims, &rule.required_roles) {
            return Err(JwtError { reason: Reason::InsufficientRoles, detail: "a required role is missing" });
        }
        Ok(Outcome::Valid(claims))
    }

    /// Signature and caller-independent claims, from the cache when warm.
    pub async fn verify(&self, token: &str) -> Result<Arc<Claims>, JwtError> {
        let now = jwt::unix_now();
        let mut hasher = DefaultHasher::new();
        token.hash(&mut hasher);
        let key = hasher.finish();
        let keys = self
            .jwks
            .keys()
            .ok_or(JwtError { reason: Reason::JwksUnavailable, detail: "signing keys never loaded" })?;
        if let Some(hit) = self.cache.get(&key).filter(|hit| *hit.token == *token) {
            let usable =
                keys.contains(&hit.claims.kid) && hit.claims.exp.saturating_add(self.config.leeway_secs) >= now;
            if usable {
                return Ok(hit.claims.clone());
            }
            self.cache.invalidate(&key);
        }
        let claims = match jwt::verify(token, &keys, &self.config, now)? {
            Some(claims) => claims,
            None => {
                let kid = jwt::kid_of(token)?;
                let keys = self.jwks.refetch_for(&kid).await.unwrap_or(keys);
                jwt::verify(token, &keys, &self.config, now)?
                    .ok_or(JwtError { reason: Reason::JwtInvalid, detail: "unknown kid" })?
            }
        };
        let claims = Arc::new(claims);
        self.cache.insert(key, Arc::new(Verified { token: token.into(), claims: claims.clone() }));
        Ok(claims)
    }
}

/// The bearer token: exactly one `Authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Result<&str, JwtError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(JwtError { reason: Reason::JwtRequired, detail: "no bearer token" });
    };
    let bad = JwtError { reason: Reason::JwtInvalid, detail: "malformed Authorization header" };
    if values.next().is_some() {
        return Err(bad);
    }
    let value = value.to_str().map_err(|_| bad.clone())?;
    let (scheme, token) = value.split_once(' ').ok_or(bad.clone())?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(bad);
    }
    Ok(token.trim())
}

/// Policy rules that need a token must be checkable: a `jwt` section exists
/// and each such rule's entry can be bound to the token (or unbound tokens
/// are explicitly allowed).
pub fn check_policy(doc: &policy::PolicyDoc, jwt: Option<&JwtSection>) -> Result<(), String> {
    for entry in &doc.entries {
        let Some(index) = entry.rules.iter().position(|r| r.require_jwt) else { continue };
        let Some(jwt) = jwt else {
            return Err(format!(
                "entry `{}` rules[{index}] has `require_jwt` but the config has no `jwt` section",
                entry.name
            ));
        };
        if entry.entra_agent_id.is_none() && entry.entra_app_id.is_none() && !jwt.allow_unbound_tokens {
            return Err(format!(
                "entry `{}` rules[{index}] has `require_jwt` but the entry has neither `entra_agent_id` nor `entra_app_id` \
                 to bind the token to the caller (set ENTRA_ID_{}, or `jwt.allow_unbound_tokens: true`)",
                entry.name,
                policy::reference::env_name(&entry.name)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(AUTHORIZATION, value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn exactly_one_bearer_token() {
        let reason = |values: &[&str]| bearer(&headers(values)).map(str::to_owned).map_err(|e| e.reason);
        assert_eq!(reason(&["Bearer abc"]), Ok("abc".into()));
        assert_eq!(reason(&["bearer  abc "]), Ok("abc".into()), "scheme in any case, spaces trimmed");
        assert_eq!(reason(&[]), Err(Reason::JwtRequired));
        assert_eq!(reason(&["Bearer a", "Bearer b"]), Err(Reason::JwtInvalid), "two tokens: which one?");
        assert_eq!(reason(&["Basic dXNlcjpwdw=="]), Err(Reason::JwtInvalid));
        assert_eq!(reason(&["Bearer"]), Err(Reason::JwtInvalid));
        assert_eq!(reason(&["Bearer "]), Err(Reason::JwtInvalid));
        assert_eq!(reason(&["Bearerabc"]), Err(Reason::JwtInvalid));
    }
}
