//! Layer 3: access tokens from the configured issuers (Entra, or any OIDC
//! issuer), each verified only with its own issuer's keys (`kid` required;
//! `jku`, `x5u`, `jwk` and `x5c` headers are ignored), with one reason per
//! failure.
//!
//! A token is routed to its issuer by its (not yet verified) `iss` before
//! anything else; then the header's `alg` must be one the issuer allows and
//! match the key's type, the signature must verify, then `exp` / `nbf` (with
//! leeway), issuer (and Entra's tenant), audience (any configured value
//! suffices, RFC 7519). Per request come the caller binding, the
//! certificate binding (RFC 8705) and the rule's roles.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::decision::Reason;
use crate::reference::Entry;

/// The signature algorithms an issuer may be allowed: never `none` or HMAC.
pub const ALGORITHMS: [Algorithm; 4] = [Algorithm::RS256, Algorithm::PS256, Algorithm::ES256, Algorithm::EdDSA];

/// A verification key and what it may verify.
struct Key {
    decoding: DecodingKey,
    /// The JWK's own `alg`, when it names one: the token's must be it.
    alg: Option<Algorithm>,
}

/// The key a token was verified with: equal only to itself (the same key
/// in the same key set), so a `kid` that names new key material is a
/// different key.
#[derive(Clone)]
pub struct KeyHandle(Arc<Key>);

impl PartialEq for KeyHandle {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for KeyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHandle")
    }
}

/// One issuer's verification keys in force, by `kid`: RSA, EC P-256 and
/// Ed25519 signing keys; symmetric keys and other curves are skipped.
///
/// Looked up on every request that reuses a verified token, with foldhash
/// (SipHash cost ~0.5% of a proxied request's instructions): a peer's `kid`
/// is only ever looked up, the keys stored come from trusted issuers' JWKS,
/// so there are no chosen collisions to store and no flood to resist.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: HashMap<String, Arc<Key>, foldhash::fast::RandomState>,
}

/// Which rules an issuer's tokens follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssuerKind {
    /// Microsoft Entra: v1 and v2 issuers of one tenant, `tid` checked,
    /// `oid` binds to `entra_agent_id`, `azp`/`appid` to `entra_app_id`.
    Entra { tenant_id: String },
    /// Any other OpenID Connect issuer.
    Oidc,
}

/// What a token from one issuer must satisfy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerConfig {
    /// How the issuer is named in audit events and `/mgmt/oauth-status`.
    pub name: Arc<str>,
    pub kind: IssuerKind,
    /// The accepted `iss` values (Entra: `{authority}/{tenant}/v2.0` and
    /// `https://sts.windows.net/{tenant}/`).
    pub iss: Vec<String>,
    pub audiences: Vec<String>,
    /// A subset of [`ALGORITHMS`].
    pub algorithms: Vec<Algorithm>,
    /// The claims (dotted paths) naming the calling agent: the first that
    /// holds a string is the agent ID.
    pub agent_claims: Vec<String>,
    /// Where the roles are (a dotted path): an array of strings, or for
    /// `scope`/`scp` also a space-separated string.
    pub roles_claim: String,
    pub leeway_secs: u64,
}

/// RFC 8705 section 3.1: what the token says about the certificate it is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CertBinding {
    /// No `cnf.x5t#S256`: the token is not bound to a certificate.
    #[default]
    Unbound,
    /// `cnf` or `cnf.x5t#S256` is there but is not an object / a base64url
    /// SHA-256: a binding that cannot be checked is refused.
    Malformed,
    /// `cnf` names another confirmation method (DPoP's `jkt`, `jwk`, `jku`,
    /// `kid`, ...), alone or next to `x5t#S256`: the sidecar cannot check
    /// it, so the token is refused rather than used as a plain bearer.
    OtherMethod,
    /// The base64url (no padding) SHA-256 of the certificate's DER.
    X5tS256(String),
}

/// The claims later layers and the audit event use. Never the token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The issuer's configured name.
    pub issuer: Arc<str>,
    /// The issuer's kind is Entra (binding by `oid` / app ID).
    pub entra: bool,
    pub kid: String,
    pub exp: u64,
    pub oid: Option<String>,
    /// The agent claim (`azp` / `appid` for Entra). Shared with the audit
    /// events of the requests that present this (cached) token, like `roles`.
    pub client_id: Option<Arc<str>>,
    pub roles: Arc<[String]>,
    /// Every string-valued top-level claim, for `required_tags`.
    pub strings: HashMap<String, String>,
    pub cnf: CertBinding,
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

/// The signature algorithm a JWK's `alg` names, `Err` for one that is not
/// for signatures (an encryption key).
fn signing_alg(alg: &KeyAlgorithm) -> Result<Algorithm, ()> {
    alg.to_string().parse().map_err(|_| ())
}

impl KeySet {
    /// Parses a JWKS document. Keys without a `kid`, not for signing
    /// (`use` other than `sig`, an encryption `alg`), symmetric (`oct`), or
    /// on a curve other than P-256 and Ed25519 are skipped.
    pub fn from_jwks(json: &[u8]) -> Result<Self, String> {
        let set: JwkSet = serde_json::from_slice(json).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = HashMap::default();
        for jwk in &set.keys {
            let usable = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => true,
                AlgorithmParameters::EllipticCurve(ec) => ec.curve == EllipticCurve::P256,
                AlgorithmParameters::OctetKeyPair(okp) => okp.curve == EllipticCurve::Ed25519,
                _ => false,
            } && matches!(jwk.common.public_key_use, None | Some(PublicKeyUse::Signature));
            let alg = match &jwk.common.key_algorithm {
                None => Ok(None),
                Some(alg) => signing_alg(alg).map(Some),
            };
            let (Some(kid), Ok(alg)) = (jwk.common.key_id.clone().filter(|k| usable && !k.is_empty()), alg) else {
                continue;
            };
            if let Ok(decoding) = DecodingKey::from_jwk(jwk) {
                keys.insert(kid, Arc::new(Key { decoding, alg }));
            }
        }
        Ok(Self { keys })
    }

    /// The key named `kid`, to tell later whether it is still the same one.
    pub fn handle(&self, kid: &str) -> Option<KeyHandle> {
        self.keys.get(kid).cloned().map(KeyHandle)
    }

    /// Whether `kid` still names the very key `handle` stands for (no copy:
    /// asked on every request that reuses a verified token).
    pub fn still_holds(&self, kid: &str, handle: &KeyHandle) -> bool {
        self.keys.get(kid).is_some_and(|key| Arc::ptr_eq(key, &handle.0))
    }

    /// The verification key for `kid`.
    pub fn get(&self, kid: &str) -> Option<&DecodingKey> {
        self.keys.get(kid).map(|k| &k.decoding)
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

impl IssuerConfig {
    /// Entra: one tenant's v2 and v1 issuers, RS256, `azp` then `appid`, `roles`.
    pub fn entra(authority: &str, tenant_id: &str, audiences: Vec<String>, leeway_secs: u64) -> Self {
        Self {
            name: Arc::from("entra"),
            kind: IssuerKind::Entra { tenant_id: tenant_id.to_owned() },
            iss: vec![
                format!("{}/{tenant_id}/v2.0", authority.trim_end_matches('/')),
                format!("https://sts.windows.net/{tenant_id}/"),
            ],
            audiences,
            algorithms: vec![Algorithm::RS256],
            agent_claims: vec!["azp".into(), "appid".into()],
            roles_claim: "roles".into(),
            leeway_secs,
        }
    }
}

/// Seconds since the Unix epoch now: the time base of `exp`, `nbf` and `iat`.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// The token's `iss`, read before any verification, to pick the only
/// issuer whose keys may verify it. A token without one is `jwt_invalid`.
pub fn issuer_of(token: &str) -> Result<String, JwtError> {
    let claims: Map<String, Value> =
        jsonwebtoken::dangerous::insecure_decode_claims(token).map_err(|_| invalid("malformed token"))?;
    match claims.get("iss") {
        Some(Value::String(iss)) if !iss.is_empty() => Ok(iss.clone()),
        _ => Err(invalid("no iss")),
    }
}

/// The header's `kid`, after checking the token is RS256 (the console's
/// sign-in, JWT-SVID assertions). A missing `kid` or another algorithm is `jwt_invalid`.
pub fn kid_of(token: &str) -> Result<String, JwtError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed token"))?;
    if header.alg != Algorithm::RS256 {
        return Err(invalid("algorithm is not RS256"));
    }
    header.kid.filter(|k| !k.is_empty()).ok_or(invalid("no kid"))
}

/// The header's algorithm and `kid`, after checking the issuer allows the
/// algorithm. A missing `kid` or another algorithm (`none`, HS*) is `jwt_invalid`.
pub fn header_of(token: &str, config: &IssuerConfig) -> Result<(Algorithm, String), JwtError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed token"))?;
    if !config.algorithms.contains(&header.alg) {
        return Err(invalid("algorithm not allowed for this issuer"));
    }
    let kid = header.kid.filter(|k| !k.is_empty()).ok_or(invalid("no kid"))?;
    Ok((header.alg, kid))
}

/// The claim named `path`, or else the value at it as a dotted path
/// (`realm_access.roles`): namespaced claims such as
/// `https://example.com/roles` are names with dots.
fn at_path<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(path) {
        return Some(value);
    }
    let mut parts = path.split('.');
    let first = claims.get(parts.next()?)?;
    parts.try_fold(first, |value, part| value.get(part))
}

/// The roles at `path`: absent is none; an array must hold only strings; a
/// string is accepted for `scope`/`scp` (space-separated, RFC 8693 4.2).
fn roles_at(claims: &Map<String, Value>, path: &str) -> Result<Arc<[String]>, JwtError> {
    let wrong = JwtError { reason: Reason::JwtInvalid, detail: "roles claim has the wrong type" };
    let scope_like = matches!(path.rsplit('.').next(), Some("scope" | "scp"));
    match at_path(claims, path) {
        None | Some(Value::Null) => Ok(Arc::default()),
        Some(Value::Array(items)) => {
            items.iter().map(|v| v.as_str().map(str::to_owned).ok_or(wrong.clone())).collect::<Result<_, _>>()
        }
        Some(Value::String(s)) if scope_like => Ok(s.split(' ').filter(|r| !r.is_empty()).map(str::to_owned).collect()),
        Some(_) => Err(wrong),
    }
}

/// `cnf.x5t#S256` (RFC 8705 3.1): a 43-character base64url SHA-256.
fn cert_binding(claims: &Map<String, Value>) -> CertBinding {
    let Some(cnf) = claims.get("cnf") else { return CertBinding::Unbound };
    let Some(cnf) = cnf.as_object() else { return CertBinding::Malformed };
    if cnf.keys().any(|method| method != "x5t#S256") {
        return CertBinding::OtherMethod;
    }
    match cnf.get("x5t#S256") {
        None => CertBinding::Unbound,
        Some(Value::String(t))
            if t.len() == 43 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            CertBinding::X5tS256(t.clone())
        }
        Some(_) => CertBinding::Malformed,
    }
}

/// Verifies the signature with the key named by `kid` in `keys` (the
/// keys of the token's issuer, `config`) and checks the claims that do not
/// depend on the caller. `Ok(None)`: the key is not in `keys`.
pub fn verify(token: &str, keys: &KeySet, config: &IssuerConfig, now: u64) -> Result<Option<Claims>, JwtError> {
    let (alg, kid) = header_of(token, config)?;
    let Some(key) = keys.keys.get(&kid) else { return Ok(None) };
    let family_ok = match alg.family() {
        AlgorithmFamily::Rsa | AlgorithmFamily::Ec | AlgorithmFamily::Ed => key.decoding.family() == alg.family(),
        AlgorithmFamily::Hmac => false,
    };
    if !family_ok || key.alg.is_some_and(|a| a != alg) {
        return Err(invalid("algorithm does not match the key"));
    }
    let mut validation = Validation::new(alg);
    // Time, issuer and audience are checked below, each with its own reason.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &validation)
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
    if !string("iss").is_some_and(|iss| config.iss.iter().any(|want| want == iss)) {
        return Err(JwtError { reason: Reason::JwtWrongIssuer, detail: "issuer is not this issuer's" });
    }
    if let IssuerKind::Entra { tenant_id } = &config.kind
        && string("tid") != Some(tenant_id.as_str())
    {
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
    let roles = roles_at(&claims, &config.roles_claim)?;
    let client_id = config.agent_claims.iter().find_map(|path| at_path(&claims, path)?.as_str()).map(Arc::from);
    Ok(Some(Claims {
        issuer: config.name.clone(),
        entra: matches!(config.kind, IssuerKind::Entra { .. }),
        kid,
        exp,
        oid: string("oid").map(str::to_owned),
        client_id,
        roles,
        strings: claims.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect(),
        cnf: cert_binding(&claims),
    }))
}

/// The claims a policy decision point needs, in a form that does not
/// depend on the issuer (AuthZEN `context.claims`): `iss`, `azp` (the agent
/// claim), `oid`, `roles`, `cnf.x5t#S256` when bound, and the string claims
/// named in `extra` (a rule's `required_tags`). Never the token.
pub fn normalized<'a>(claims: &Claims, extra: impl Iterator<Item = &'a str>) -> Map<String, Value> {
    let mut out = Map::new();
    for name in std::iter::once("iss").chain(extra) {
        if let Some(value) = claims.strings.get(name) {
            out.insert(name.to_owned(), Value::String(value.clone()));
        }
    }
    if let Some(azp) = &claims.client_id {
        out.insert("azp".into(), Value::String(azp.to_string()));
    }
    if let Some(oid) = claims.oid.as_ref().filter(|_| claims.entra) {
        out.insert("oid".into(), Value::String(oid.clone()));
    }
    out.insert("roles".into(), claims.roles.iter().cloned().map(Value::String).collect());
    if let CertBinding::X5tS256(x5t) = &claims.cnf {
        out.insert("cnf".into(), serde_json::json!({ "x5t#S256": x5t }));
    }
    out
}

/// Claims a policy enforcement point already validated, in the form of
/// [`normalized`] (`iss` picked `config`): no signature, time or audience
/// to check. `roles` must be an array of strings.
pub fn asserted(claims: &Map<String, Value>, config: &IssuerConfig) -> Result<Claims, JwtError> {
    let string = |name: &str| claims.get(name).and_then(Value::as_str);
    Ok(Claims {
        issuer: config.name.clone(),
        entra: matches!(config.kind, IssuerKind::Entra { .. }),
        kid: String::new(),
        exp: claims.get("exp").and_then(Value::as_u64).unwrap_or(u64::MAX),
        oid: string("oid").map(str::to_owned),
        client_id: string("azp").map(Arc::from),
        roles: roles_at(claims, "roles")?,
        strings: claims.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect(),
        cnf: cert_binding(claims),
    })
}

/// Whether the token belongs to the caller's policy `entry`. Any token: its
/// agent claim is the entry's `agent_id` (exactly; for Entra GUIDs in any
/// case). Entra tokens also: `oid` is the entry's `entra_agent_id`, or
/// `azp`/`appid` its `entra_app_id`. `None` when the entry names no ID at
/// all; an entry that names only IDs of another kind of issuer is not bound.
pub fn bound_to(claims: &Claims, entry: &Entry) -> Option<bool> {
    let named = entry.agent_id.is_some() || entry.entra_agent_id.is_some() || entry.entra_app_id.is_some();
    if !named {
        return None;
    }
    let agent = claims.client_id.as_deref();
    let same = |a: &str, b: &str| if claims.entra { a.eq_ignore_ascii_case(b) } else { a == b };
    let by_agent_id = entry.agent_id.as_deref().is_some_and(|id| agent.is_some_and(|a| same(a, id)));
    let by_oid = claims.entra
        && entry
            .entra_agent_id
            .as_deref()
            .is_some_and(|id| claims.oid.as_deref().is_some_and(|o| o.eq_ignore_ascii_case(id)));
    let by_app_id = claims.entra
        && entry.entra_app_id.as_deref().is_some_and(|id| agent.is_some_and(|a| a.eq_ignore_ascii_case(id)));
    Some(by_agent_id || by_oid || by_app_id)
}

/// RFC 8705: a token bound to a certificate must be presented on a
/// connection authenticated with that certificate (`leaf_sha256`, base64url
/// without padding), whether or not the rule requires binding; `required`
/// refuses unbound tokens too. `leaf_sha256` is `None` only where there is
/// no connection (`explain`): a thumbprint cannot be compared then.
pub fn check_cert_binding(claims: &Claims, leaf_sha256: Option<&str>, required: bool) -> Result<(), JwtError> {
    let not_bound = |detail| Err(JwtError { reason: Reason::JwtNotBound, detail });
    match &claims.cnf {
        CertBinding::Unbound if required => not_bound("token is not bound to a certificate"),
        CertBinding::Unbound => Ok(()),
        CertBinding::Malformed => not_bound("cnf is malformed"),
        CertBinding::OtherMethod => not_bound("cnf names a confirmation method the sidecar cannot check"),
        CertBinding::X5tS256(want) => match leaf_sha256 {
            Some(have) if have != want => not_bound("token is bound to another certificate"),
            _ => Ok(()),
        },
    }
}

/// Every required role is in the token.
pub fn has_roles(claims: &Claims, required: &[String]) -> bool {
    required.iter().all(|r| claims.roles.iter().any(|have| have == r))
}
