//! Layer 3 in the sidecar: the token from `Authorization: Bearer`, routed
//! by its `iss` to one configured issuer and verified against that
//! issuer's keys only, with a cache of verified tokens so a warm request
//! does not repeat the signature verification.
//!
//! A cached token is only reused while the key that signed it is still in
//! its issuer's JWKS and it has not expired; a new `jwt` configuration
//! builds a new validator (and cache), so changed audiences, algorithms or
//! claims apply at once.

use std::sync::Arc;
use std::time::Duration;

use hyper::HeaderMap;
use hyper::header::AUTHORIZATION;
use policy::Reason;
use policy::hashed::{Answers, HashedCache};
use policy::jwt::{self, Claims, IssuerConfig, JwtError};
use policy::reference::{Entry, Rule};

use crate::config::JwtSection;
use crate::facts::jwks::{Jwks, JwksSettings, KeysAt};

/// Bytes of verified tokens remembered (weighed like the decision cache:
/// a token may be up to `limits.max_header_bytes`, and its claims too, so a
/// count alone would not bound the memory).
pub const CACHE_BYTES: u64 = 16 << 20;
/// What an entry costs besides its token and claims: moka's node, queues
/// and table (about 340 bytes, as measured for the decision cache's,
/// `policy/tests/cache_memory.rs`), the `Verified` and `Claims` behind
/// their `Arc`s (about 280), the allocator's headers. Measured
/// (`tests/token_cache_memory.rs`, a full cache): the process holds 0.88x
/// what the entries weigh with 285-byte tokens and 1.03x with Entra-like
/// 970-byte ones; with 256 here it held 1.65x.
const ENTRY_OVERHEAD: usize = 1024;
/// Upper bound on how long a verified token is remembered (it is also
/// dropped at its `exp`).
const CACHE_TTL: Duration = Duration::from_secs(600);

pub struct Oauth {
    issuers: Vec<Issuer>,
    allow_unbound: bool,
    require_bound: bool,
    leeway: Duration,
    /// Verified tokens by a hash of the token (a hit is compared token to
    /// token: see [`HashedCache`]).
    cache: HashedCache<Verified>,
}

/// One trusted issuer: its rules and its keys.
pub struct Issuer {
    pub config: IssuerConfig,
    pub jwks: Arc<Jwks>,
}

struct Verified {
    token: Box<str>,
    claims: Arc<Claims>,
    /// Index into `issuers`.
    issuer: usize,
    /// The key that verified it: the token is reused only while its
    /// issuer's key set still holds this very key (not merely its `kid`).
    key: Option<policy::jwt::KeyHandle>,
}

impl Verified {
    /// Approximate bytes held by one entry.
    fn weight(_key: &u64, entry: &Arc<Self>) -> u32 {
        let claims = &entry.claims;
        // Each claim: its name and value with their allocator headers; the
        // map's buckets (two `String`s each, grown by doubling) by capacity.
        let strings: usize = claims.strings.iter().map(|(k, v)| k.len() + v.len() + 32).sum();
        let buckets = claims.strings.capacity() * 49;
        let roles: usize = claims.roles.iter().map(|role| 24 + role.len() + 16).sum();
        let ids = claims.kid.len() + claims.oid.as_ref().map_or(0, String::len);
        let client_id = claims.client_id.as_ref().map_or(0, |id| id.len() + 32);
        let cnf = match &claims.cnf {
            policy::jwt::CertBinding::X5tS256(thumbprint) => thumbprint.len() + 16,
            _ => 0,
        };
        let bytes = ENTRY_OVERHEAD + entry.token.len() + strings + buckets + roles + ids + client_id + cnf;
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

impl Answers<[u8]> for Verified {
    fn answers(&self, token: &[u8]) -> bool {
        self.token.as_bytes() == token
    }
}

/// The token's place in the request, for the rule and the audit event.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The rule required no token.
    NotRequired,
    Valid(Arc<Claims>),
}

/// Where each issuer's keys are, in the order of [`JwtSection::issuer_configs`].
pub fn key_sources(section: &JwtSection) -> Vec<JwksSettings> {
    let entra = section.entra.iter().map(|e| JwksSettings {
        name: Arc::from("entra"),
        at: KeysAt::Discovery {
            url: format!("{}/{}/v2.0/.well-known/openid-configuration", e.authority, e.tenant_id),
            issuer: None,
        },
        refresh: section.refresh,
        refetch_interval: section.refetch_interval,
    });
    let others = section.issuers.iter().map(|i| JwksSettings {
        name: Arc::from(i.name.as_str()),
        at: match &i.jwks_uri {
            Some(uri) => KeysAt::Jwks(uri.clone()),
            None => KeysAt::Discovery {
                url: format!("{}/.well-known/openid-configuration", i.issuer.trim_end_matches('/')),
                issuer: Some(i.issuer.clone()),
            },
        },
        refresh: section.refresh,
        refetch_interval: section.refetch_interval,
    });
    entra.chain(others).collect()
}

impl Oauth {
    /// `jwks`: one key provider per issuer, in the order of [`key_sources`].
    pub fn new(section: &JwtSection, jwks: Vec<Arc<Jwks>>) -> Self {
        let issuers =
            section.issuer_configs().into_iter().zip(jwks).map(|(config, jwks)| Issuer { config, jwks }).collect();
        Self {
            issuers,
            allow_unbound: section.allow_unbound_tokens,
            require_bound: section.require_bound_tokens,
            leeway: section.leeway,
            cache: HashedCache::new(
                moka::sync::Cache::builder()
                    .max_capacity(CACHE_BYTES)
                    .weigher(Verified::weight)
                    .time_to_live(CACHE_TTL),
            ),
        }
    }

    /// The same issuers and keys under a reloaded `section` (which names the
    /// same issuers and key locations: anything else needs a restart).
    pub fn reconfigured(&self, section: &JwtSection) -> Self {
        Self::new(section, self.issuers.iter().map(|i| i.jwks.clone()).collect())
    }

    pub fn issuers(&self) -> &[Issuer] {
        &self.issuers
    }

    pub fn leeway(&self) -> Duration {
        self.leeway
    }

    /// The token cache's entries and their weighed bytes (after pending
    /// evictions), at most [`CACHE_BYTES`].
    pub fn cache_usage(&self) -> (u64, u64) {
        self.cache.usage()
    }

    /// Layer 3 for a request whose matched `rule` (of `entry`) may require a
    /// token; `leaf_sha256` is the caller's certificate (RFC 8705 `x5t#S256`).
    pub async fn check(
        &self,
        headers: &HeaderMap,
        entry: &Entry,
        rule: &Rule,
        leaf_sha256: Option<&str>,
    ) -> Result<Outcome, JwtError> {
        if !rule.require_jwt {
            return Ok(Outcome::NotRequired);
        }
        let token = bearer(headers)?;
        let claims = self.verify(token).await?;
        self.judge(claims, entry, rule, leaf_sha256)
    }

    /// Layer 3 with claims a policy enforcement point already validated
    /// (the AuthZEN PDP's `context.claims`, see [`jwt::normalized`]): routed
    /// by `iss` to a configured issuer, then judged as a token's would be.
    /// There is no connection: a certificate binding is not compared.
    pub fn check_asserted(
        &self,
        asserted: &serde_json::Map<String, serde_json::Value>,
        entry: &Entry,
        rule: &Rule,
    ) -> Result<Outcome, JwtError> {
        if !rule.require_jwt {
            return Ok(Outcome::NotRequired);
        }
        let iss = asserted.get("iss").and_then(serde_json::Value::as_str);
        let issuer = self.issuers.iter().find(|i| iss.is_some_and(|iss| i.config.iss.iter().any(|want| want == iss)));
        let Some(issuer) = issuer else {
            return Err(JwtError { reason: Reason::JwtWrongIssuer, detail: "issuer is not configured" });
        };
        let claims = Arc::new(jwt::asserted(asserted, &issuer.config)?);
        self.judge(claims, entry, rule, None)
    }

    /// The per-request checks of a verified token: whose it is, its certificate binding, its roles.
    fn judge(
        &self,
        claims: Arc<Claims>,
        entry: &Entry,
        rule: &Rule,
        leaf_sha256: Option<&str>,
    ) -> Result<Outcome, JwtError> {
        if !entry.issuers.is_empty() && !entry.issuers.iter().any(|name| name.as_ref() == claims.issuer.as_ref()) {
            return Err(JwtError {
                reason: Reason::JwtWrongIssuer,
                detail: "not an issuer this caller's tokens may come from",
            });
        }
        let bound = jwt::bound_to(&claims, entry);
        if bound == Some(false) || (bound.is_none() && !self.allow_unbound) {
            return Err(JwtError { reason: Reason::JwtCallerMismatch, detail: "token is not the caller's" });
        }
        jwt::check_cert_binding(&claims, leaf_sha256, rule.require_bound_token.unwrap_or(self.require_bound))?;
        if !jwt::has_roles(&claims, &rule.required_roles) {
            return Err(JwtError { reason: Reason::InsufficientRoles, detail: "a required role is missing" });
        }
        Ok(Outcome::Valid(claims))
    }

    /// Signature and caller-independent claims, from the cache when warm.
    /// `token`: the header's bytes, read as text only on a miss (a hit is,
    /// byte for byte, a token that was read and verified).
    pub async fn verify(&self, token: &[u8]) -> Result<Arc<Claims>, JwtError> {
        let now = jwt::unix_now();
        if let Some(hit) = self.cache.get(token) {
            let keys = self.issuers.get(hit.issuer).and_then(|i| i.jwks.keys());
            let same_key = keys.zip(hit.key.as_ref()).is_some_and(|(keys, key)| keys.still_holds(&hit.claims.kid, key));
            let usable = same_key && hit.claims.exp.saturating_add(self.leeway.as_secs()) >= now;
            if usable {
                return Ok(hit.claims.clone());
            }
            self.cache.remove(token, &hit);
        }
        let token = token_text(token)?;
        // Only the keys of the issuer the token names may verify it.
        let iss = jwt::issuer_of(token)?;
        let Some((index, issuer)) = self.issuers.iter().enumerate().find(|(_, i)| i.config.iss.contains(&iss)) else {
            return Err(JwtError { reason: Reason::JwtWrongIssuer, detail: "issuer is not configured" });
        };
        let keys = issuer
            .jwks
            .keys()
            .ok_or(JwtError { reason: Reason::JwksUnavailable, detail: "signing keys never loaded" })?;
        let (claims, keys) = match jwt::verify(token, &keys, &issuer.config, now)? {
            Some(claims) => (claims, keys),
            None => {
                let (_, kid) = jwt::header_of(token, &issuer.config)?;
                // Boxed: a cold path (a fetch), kept out of every request's future.
                let keys = Box::pin(issuer.jwks.refetch_for(&kid)).await.unwrap_or(keys);
                let claims = jwt::verify(token, &keys, &issuer.config, now)?
                    .ok_or(JwtError { reason: Reason::JwtInvalid, detail: "unknown kid" })?;
                (claims, keys)
            }
        };
        let verified_with = keys.handle(&claims.kid);
        let claims = Arc::new(claims);
        let verified = Verified { token: token.into(), claims: claims.clone(), issuer: index, key: verified_with };
        self.cache.insert(token.as_bytes(), verified);
        Ok(claims)
    }
}

/// RFC 8705 `x5t#S256` of a certificate: the base64url (no padding) SHA-256 of its DER.
pub fn thumbprint_s256(der: &[u8]) -> String {
    use base64::Engine;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// The bearer token: exactly one `Authorization: Bearer <token>` header.
/// The token's bytes: [`Oauth::verify`] reads them as text ([`token_text`])
/// only when its cache does not hold them.
fn bearer(headers: &HeaderMap) -> Result<&[u8], JwtError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(JwtError { reason: Reason::JwtRequired, detail: "no bearer token" });
    };
    if values.next().is_some() {
        return Err(MALFORMED);
    }
    let value = value.as_bytes();
    let (scheme, token) = value.split_at(value.iter().position(|&b| b == b' ').ok_or(MALFORMED)?);
    let token = token.trim_ascii();
    if !scheme.eq_ignore_ascii_case(b"bearer") || token.is_empty() {
        return Err(MALFORMED);
    }
    Ok(token)
}

const MALFORMED: JwtError = JwtError { reason: Reason::JwtInvalid, detail: "malformed Authorization header" };

/// A token as text: visible ASCII, spaces and tabs only (what
/// `HeaderValue::to_str` accepts), else it is malformed.
fn token_text(token: &[u8]) -> Result<&str, JwtError> {
    if !token.iter().all(|&b| (b' '..=b'~').contains(&b) || b == b'\t') {
        return Err(MALFORMED);
    }
    std::str::from_utf8(token).map_err(|_| MALFORMED)
}

/// Policy rules that need a token must be checkable: a `jwt` section exists
/// and each such rule's entry can be bound to the token (or unbound tokens
/// are explicitly allowed).
pub fn check_policy(doc: &policy::PolicyDoc, jwt: Option<&JwtSection>) -> Result<(), String> {
    for entry in &doc.entries {
        let configured = |name: &str| {
            let entra = name == "entra" && jwt.is_some_and(|j| j.entra.is_some());
            entra || jwt.is_some_and(|j| j.issuers.iter().any(|i| i.name == name))
        };
        if let Some(unknown) = entry.issuers.iter().find(|name| !configured(name)) {
            return Err(format!(
                "entry `{}` `issuers`: `{unknown}` is not a configured issuer (`entra`, or a `jwt.issuers[].name`)",
                entry.name
            ));
        }
        let Some(index) = entry.rules.iter().position(|r| r.require_jwt) else { continue };
        let Some(jwt) = jwt else {
            return Err(format!(
                "entry `{}` rules[{index}] has `require_jwt` but the config has no `jwt` section",
                entry.name
            ));
        };
        let named = entry.agent_id.is_some() || entry.entra_agent_id.is_some() || entry.entra_app_id.is_some();
        if !named && !jwt.allow_unbound_tokens {
            return Err(format!(
                "entry `{}` rules[{index}] has `require_jwt` but the entry has no `agent_id`, `entra_agent_id` or \
                 `entra_app_id` to bind the token to the caller (set AGENT_ID_{name} or ENTRA_ID_{name}, or \
                 `jwt.allow_unbound_tokens: true`)",
                entry.name,
                name = policy::reference::env_name(&entry.name)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

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
        let reason = |values: &[&str]| bearer(&headers(values)).map(<[u8]>::to_vec).map_err(|e| e.reason);
        assert_eq!(reason(&["Bearer abc"]), Ok("abc".into()));
        assert_eq!(reason(&["bearer  abc "]), Ok("abc".into()), "scheme in any case, spaces trimmed");
        assert_eq!(reason(&[]), Err(Reason::JwtRequired));
        assert_eq!(reason(&["Bearer a", "Bearer b"]), Err(Reason::JwtInvalid), "two tokens: which one?");
        assert_eq!(reason(&["Basic dXNlcjpwdw=="]), Err(Reason::JwtInvalid));
        assert_eq!(reason(&["Bearer"]), Err(Reason::JwtInvalid));
        assert_eq!(reason(&["Bearer "]), Err(Reason::JwtInvalid));
        assert_eq!(reason(&["Bearerabc"]), Err(Reason::JwtInvalid));
    }

    #[test]
    fn a_token_is_text_as_a_header_value_is() {
        assert_eq!(token_text(b"eyJ.e30.sig-_"), Ok("eyJ.e30.sig-_"));
        assert_eq!(token_text(b"a b\tc~!"), Ok("a b\tc~!"), "what HeaderValue::to_str accepts");
        for bad in [&b"caf\xc3\xa9"[..], b"\xff", b"a\x7fb", b"a\x01b"] {
            assert_eq!(token_text(bad).map_err(|e| e.detail), Err(MALFORMED.detail), "{bad:?}");
            let value = hyper::header::HeaderValue::from_bytes(bad);
            assert!(value.is_err() || value.unwrap().to_str().is_err(), "{bad:?}");
        }
    }

    fn claims_of(oid: &str) -> Claims {
        Claims {
            issuer: "entra".into(),
            entra: true,
            kid: "k1".into(),
            exp: u64::MAX,
            oid: Some(oid.into()),
            client_id: None,
            roles: Arc::new([]),
            strings: HashMap::new(),
            cnf: policy::jwt::CertBinding::Unbound,
        }
    }

    #[test]
    fn a_key_collision_is_a_miss_never_another_tokens_claims() {
        let builder = moka::sync::Cache::builder().max_capacity(CACHE_BYTES).weigher(Verified::weight);
        let cache = HashedCache::with_key(builder, std::hash::BuildHasherDefault::<policy::hashed::Collide>::default());
        let verified = |token: &str, oid: &str| Verified {
            token: token.into(),
            claims: Arc::new(claims_of(oid)),
            issuer: 0,
            key: None,
        };
        let oid = |hit: Option<Arc<Verified>>| hit.and_then(|v| v.claims.oid.clone());
        cache.insert("token-a".as_bytes(), verified("token-a", "alice"));
        assert_eq!(oid(cache.get("token-a".as_bytes())), Some("alice".into()));
        assert_eq!(oid(cache.get("token-b".as_bytes())), None, "same key, another token: a miss");
        cache.insert("token-b".as_bytes(), verified("token-b", "bob"));
        assert_eq!(oid(cache.get("token-b".as_bytes())), Some("bob".into()));
        assert_eq!(
            oid(cache.get("token-a".as_bytes())),
            None,
            "replaced under the shared key: a miss, never bob's claims"
        );
    }

    #[test]
    fn an_entry_weighs_its_token_and_claims_so_the_cache_is_bounded_in_bytes() {
        let entry = |token: String, strings: HashMap<String, String>| {
            let claims = Claims { strings, ..claims_of("alice") };
            Arc::new(Verified { token: token.into(), claims: Arc::new(claims), issuer: 0, key: None })
        };
        let small = Verified::weight(&0, &entry("t".repeat(1_000), HashMap::new()));
        let big_token = Verified::weight(&0, &entry("t".repeat(32 << 10), HashMap::new()));
        let big_claims =
            Verified::weight(&0, &entry("t".repeat(1_000), HashMap::from([("x".repeat(8), "y".repeat(16 << 10))])));
        assert!(big_token as usize >= 32 << 10, "{big_token}");
        assert!(big_claims as usize >= small as usize + (16 << 10), "{big_claims} against {small}");
    }

    /// A JWKS with every kind of key: only RSA, P-256 and Ed25519 signing
    /// keys with a `kid` are kept, and each verifies only its own algorithm.
    #[cfg(feature = "dev")]
    #[test]
    fn a_jwks_with_mixed_key_types_keeps_only_signing_keys_it_can_use() {
        use certs::dev::JwtKey;
        use jsonwebtoken::Algorithm;
        use policy::jwt::{IssuerConfig, KeySet};
        use serde_json::json;

        let rsa = JwtKey::generate_for(Algorithm::RS256).unwrap();
        let ec = JwtKey::generate_for(Algorithm::ES256).unwrap();
        let ed = JwtKey::generate_for(Algorithm::EdDSA).unwrap();
        let jwk = |k: &JwtKey| serde_json::to_value(k.jwk().unwrap()).unwrap();
        let mut no_kid = jwk(&rsa);
        no_kid.as_object_mut().unwrap().remove("kid");
        let mut encryption = jwk(&rsa);
        encryption["kid"] = json!("enc");
        encryption["use"] = json!("enc");
        let mut oaep = jwk(&rsa);
        oaep["kid"] = json!("oaep");
        oaep["alg"] = json!("RSA-OAEP");
        let p384 = json!({"kty": "EC", "crv": "P-384", "kid": "p384", "x": "AAAA", "y": "AAAA"});
        let oct = json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"});
        let set = json!({"keys": [jwk(&rsa), jwk(&ec), jwk(&ed), no_kid, encryption, oaep, p384, oct]});
        let keys = KeySet::from_jwks(set.to_string().as_bytes()).unwrap();
        let mut kids: Vec<&str> = keys.kids().collect();
        kids.sort_unstable();
        let mut want = vec![rsa.kid(), ec.kid(), ed.kid()];
        want.sort_unstable();
        assert_eq!(kids, want);

        let mut config = IssuerConfig::entra("https://login.example", "t", vec!["a".into()], 60);
        config.kind = policy::jwt::IssuerKind::Oidc;
        config.iss = vec!["https://i.example".into()];
        config.algorithms = policy::jwt::ALGORITHMS.to_vec();
        let now = jwt::unix_now();
        let claims = json!({"iss": "https://i.example", "aud": "a", "exp": now + 60});
        for key in [&rsa, &ec, &ed] {
            let token = key.sign(&claims).unwrap();
            assert!(jwt::verify(&token, &keys, &config, now).unwrap().is_some(), "{:?}", key.alg());
        }
        // A header naming one key with another key's algorithm.
        let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
        header.kid = Some(ec.kid().to_owned());
        let crossed = rsa.sign_with_header(&header, &claims).unwrap();
        assert_eq!(jwt::verify(&crossed, &keys, &config, now).unwrap_err().detail, "algorithm does not match the key");
        // PS256 with an RSA key whose JWK says RS256.
        let mut header = jsonwebtoken::Header::new(Algorithm::PS256);
        header.kid = Some(rsa.kid().to_owned());
        let pss = jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_rsa_pem(rsa.pem().as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(jwt::verify(&pss, &keys, &config, now).unwrap_err().detail, "algorithm does not match the key");
        // An HMAC token naming the RSA key (its public key as the secret: the classic confusion).
        let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
        header.kid = Some(rsa.kid().to_owned());
        let hmac = jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(rsa.public_pem().unwrap().as_bytes()),
        )
        .unwrap();
        assert_eq!(
            jwt::verify(&hmac, &keys, &config, now).unwrap_err().detail,
            "algorithm not allowed for this issuer"
        );
    }

    /// A `kid` that comes to name other key material (a key replaced under
    /// the same name) does not keep tokens verified with the old one.
    #[cfg(feature = "dev")]
    #[tokio::test]
    async fn a_cached_token_is_reused_only_with_the_very_key_that_verified_it() {
        use certs::dev::JwtKey;
        use serde_json::json;

        let config = crate::config::Config::parse(
            std::path::Path::new("t.yaml"),
            "identity: {socket: unix:///x}\njwt: {issuers: [{name: i, issuer: 'https://i.example', audiences: [a]}]}",
            &crate::config::MapEnv::default(),
        )
        .unwrap();
        let section = config.jwt.unwrap();
        let metrics = Arc::new(crate::observe::metrics::Metrics::new().unwrap());
        let jwks = Jwks::offline(None, metrics);
        let oauth = Oauth::new(&section, vec![jwks.clone()]);
        let set = |key: &JwtKey| {
            let mut jwk = serde_json::to_value(key.jwk().unwrap()).unwrap();
            jwk["kid"] = json!("same");
            policy::jwt::KeySet::from_jwks(json!({"keys": [jwk]}).to_string().as_bytes()).unwrap()
        };
        let (old, new) = (JwtKey::generate().unwrap(), JwtKey::generate().unwrap());
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some("same".into());
        let claims = json!({"iss": "https://i.example", "aud": "a", "exp": jwt::unix_now() + 600});
        let token = old.sign_with_header(&header, &claims).unwrap();
        jwks.set_keys(set(&old));
        assert!(oauth.verify(token.as_bytes()).await.is_ok());
        assert!(oauth.verify(token.as_bytes()).await.is_ok(), "cached");
        let tampered = [token.as_bytes(), b"\xff"].concat();
        assert_eq!(oauth.verify(&tampered).await.unwrap_err().detail, MALFORMED.detail, "not text: never a hit");
        jwks.set_keys(set(&new));
        assert_eq!(
            oauth.verify(token.as_bytes()).await.unwrap_err().reason,
            Reason::JwtInvalid,
            "another key named `same`"
        );
    }

    /// An entry may only name issuers that are configured.
    #[test]
    fn an_entry_pinned_to_an_unknown_issuer_is_refused_at_load() {
        let config = crate::config::Config::parse(
            std::path::Path::new("t.yaml"),
            "identity: {socket: unix:///x}\njwt: {issuers: [{name: keycloak, issuer: 'https://kc.example', audiences: [a]}]}",
            &crate::config::MapEnv::default(),
        )
        .unwrap();
        let doc = |issuers: &str| {
            let yaml = format!(
                "version: '1'\ntrust_domain: td.example\ndefault_action: deny\npolicies:\n  - {{name: a, spiffe_id: 'spiffe://td.example/a', agent_id: a, issuers: {issuers}, rules: []}}"
            );
            policy::PolicyDoc::from_yaml(&yaml, &|_| None).unwrap()
        };
        assert_eq!(check_policy(&doc("[keycloak]"), config.jwt.as_ref()), Ok(()));
        let error = check_policy(&doc("[entra]"), config.jwt.as_ref()).unwrap_err();
        assert!(error.contains("`issuers`: `entra` is not a configured issuer"), "{error}");
        let error = check_policy(&doc("[okta]"), config.jwt.as_ref()).unwrap_err();
        assert!(error.contains("`okta`"), "{error}");
    }
}
