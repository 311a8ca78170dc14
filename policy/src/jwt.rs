//! Layer 3: Entra access tokens, validated against a key set the caller
//! cannot influence (RS256 only; `kid` required; `jku`, `x5u`, `jwk` and
//! `x5c` headers are ignored), with one reason per failure.
//!
//! Signature first, then `exp` / `nbf` (with leeway), issuer and tenant,
//! audience (any configured value suffices, RFC 7519), then per request the
//! caller binding and the rule's roles.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::decision::Reason;

/// The verification keys in force, by `kid`. Only RSA signing keys are kept.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: HashMap<String, Arc<DecodingKey>>,
}

/// What a token must satisfy (the `jwt` config section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtConfig {
    pub tenant_id: String,
    /// `{authority}/{tenant}/v2.0`
    pub issuer_v2: String,
    /// `https://sts.windows.net/{tenant}/`
    pub issuer_v1: String,
    pub audiences: Vec<String>,
    pub leeway_secs: u64,
}

/// The claims later layers and the audit event use. Never the token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub kid: String,
    pub exp: u64,
    pub oid: Option<String>,
    /// `azp` (v2) or `appid` (v1). Shared with the audit events of the
    /// requests that present this (cached) token, like `roles`.
    pub client_id: Option<Arc<str>>,
    pub roles: Arc<[String]>,
    /// Every string-valued claim, for `required_tags`.
    pub strings: HashMap<String, String>,
}

/// A token rejection: the reason, and a short description for the audit
/// event's `jwt.error` (nothing from the token that could be secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtError {
    pub reason: Reason,
    pub detail: &'static str,
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

fn invalid(detail: &'static str) -> JwtError {
    JwtError { reason: Reason::JwtInvalid, detail }
}

impl KeySet {
    /// Parses a JWKS document; keys that are not RSA signing keys with a `kid` are skipped.
    pub fn from_jwks(json: &[u8]) -> Result<Self, String> {
        let set: JwkSet = serde_json::from_slice(json).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let usable = matches!(jwk.algorithm, AlgorithmParameters::RSA(_))
                && matches!(jwk.common.public_key_use, None | Some(PublicKeyUse::Signature));
            let Some(kid) = jwk.common.key_id.clone().filter(|_| usable) else { continue };
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                keys.insert(kid, Arc::new(key));
            }
        }
        Ok(Self { keys })
    }

    /// The verification key for `kid`.
    pub fn get(&self, kid: &str) -> Option<&DecodingKey> {
        self.keys.get(kid).map(Arc::as_ref)
    }

    /// Adds every key of `other` (a union of trusted issuers).
    pub fn extend(&mut self, other: KeySet) {
        self.keys.extend(other.keys);
    }

    pub fn contains(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.keys.keys()).finish()
    }
}

impl JwtConfig {
    pub fn new(authority: &str, tenant_id: &str, audiences: Vec<String>, leeway_secs: u64) -> Self {
        Self {
            tenant_id: tenant_id.to_owned(),
            issuer_v2: format!("{}/{tenant_id}/v2.0", authority.trim_end_matches('/')),
            issuer_v1: format!("https://sts.windows.net/{tenant_id}/"),
            audiences,
            leeway_secs,
        }
    }
}

/// The header's `kid`, after checking the token is RS256. A missing `kid`
/// or another algorithm (`none`, HS*, ES*) is `jwt_invalid`.
/// Seconds since the Unix epoch now: the time base of `exp`, `nbf` and `iat`.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

pub fn kid_of(token: &str) -> Result<String, JwtError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed token"))?;
    if header.alg != Algorithm::RS256 {
        return Err(invalid("algorithm is not RS256"));
    }
    header.kid.filter(|k| !k.is_empty()).ok_or(invalid("no kid"))
}

/// Verifies the signature with the key named by `kid` in `keys` and checks
/// the claims that do not depend on the caller. `Ok(None)`: the key is not in `keys`.
pub fn verify(token: &str, keys: &KeySet, config: &JwtConfig, now: u64) -> Result<Option<Claims>, JwtError> {
    let kid = kid_of(token)?;
    let Some(key) = keys.keys.get(&kid) else { return Ok(None) };
    let mut validation = Validation::new(Algorithm::RS256);
    // Time, issuer and audience are checked below, each with its own reason.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, key, &validation)
        .map_err(|_| invalid("signature or payload does not verify"))?;
    let claims = data.claims;
    let number = |name: &str| claims.get(name).and_then(Value::as_u64);
    let string = |name: &str| claims.get(name).and_then(Value::as_str);

    let exp = number("exp").ok_or(invalid("no exp"))?;
    if exp.saturating_add(config.leeway_secs) < now {
        return Err(JwtError { reason: Reason::JwtExpired, detail: "expired" });
    }
    if number("nbf").is_some_and(|nbf| nbf > now.saturating_add(config.leeway_secs)) {
        return Err(JwtError { reason: Reason::JwtNotYetValid, detail: "not yet valid" });
    }
    let issuer_ok = string("iss").is_some_and(|iss| iss == config.issuer_v2 || iss == config.issuer_v1);
    if !issuer_ok {
        return Err(JwtError { reason: Reason::JwtWrongIssuer, detail: "issuer is not this tenant's" });
    }
    if string("tid") != Some(config.tenant_id.as_str()) {
        return Err(JwtError { reason: Reason::JwtWrongIssuer, detail: "tid is not this tenant" });
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => config.audiences.contains(aud),
        Some(Value::Array(auds)) => {
            auds.iter().filter_map(Value::as_str).any(|a| config.audiences.iter().any(|c| c == a))
        }
        _ => false,
    };
    if !audience_ok {
        return Err(JwtError { reason: Reason::JwtWrongAudience, detail: "no accepted audience" });
    }
    let roles = match claims.get("roles") {
        Some(Value::Array(roles)) => roles.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        _ => Arc::default(),
    };
    Ok(Some(Claims {
        kid,
        exp,
        oid: string("oid").map(str::to_owned),
        client_id: string("azp").or_else(|| string("appid")).map(Arc::from),
        roles,
        strings: claims.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect(),
    }))
}

/// Whether the token belongs to the caller: `oid` is the entry's agent ID,
/// or `azp`/`appid` its app ID. `None` when the entry names neither.
pub fn bound_to(claims: &Claims, entra_agent_id: Option<&str>, entra_app_id: Option<&str>) -> Option<bool> {
    if entra_agent_id.is_none() && entra_app_id.is_none() {
        return None;
    }
    let oid_ok = entra_agent_id.is_some_and(|id| claims.oid.as_deref().is_some_and(|oid| oid.eq_ignore_ascii_case(id)));
    let app_ok = entra_app_id.is_some_and(|id| claims.client_id.as_deref().is_some_and(|c| c.eq_ignore_ascii_case(id)));
    Some(oid_ok || app_ok)
}

/// Every required role is in the token.
pub fn has_roles(claims: &Claims, required: &[String]) -> bool {
    required.iter().all(|r| claims.roles.iter().any(|have| have == r))
}
