//! Layers 2 to 4 for one request, on one snapshot of the policy: RBAC, the
//! token the matched rule requires, then risk and tags; then, when they
//! allow, the external AuthZEN PDP (`authzen.pdp`). Layer 1 (the
//! allow-list and the caller's certificate) has already run at the
//! handshake and per request.

use std::sync::Arc;

use certs::SpiffeId;
use hyper::HeaderMap;
use policy::{CanonicalPath, Reason};

use crate::config::PolicyMode;
use crate::layers::governance::Governor;
use crate::layers::oauth::{Oauth, Outcome};
use crate::layers::pdp::{Pdp, PdpAudit, Question};
use crate::layers::rbac::Loaded;
use crate::observe::metrics::Metrics;

/// What the layers found, for the audit event (filled as they run).
#[derive(Debug, Clone, Default)]
pub struct Trace {
    /// The caller's policy entry name.
    pub entry: Option<Arc<str>>,
    /// That entry's `entra_agent_id`, for the app (`X-Spiffe-Entra-Agent-Id`).
    pub entra_agent_id: Option<Arc<str>>,
    pub policy_ids: Arc<[String]>,
    pub jwt: crate::observe::audit::JwtAudit,
    pub risk_level: Option<&'static str>,
    pub caller_tag: Option<String>,
    pub policy_version: Option<Arc<str>>,
    /// When the token that allowed the request expires (unix seconds): a
    /// stream it opened ends then.
    pub token_exp: Option<u64>,
    /// The external PDP's part, when it was asked.
    pub pdp: Option<PdpAudit>,
}

/// The first layer that denied, and the policies that decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub reason: Reason,
    pub policy_ids: Arc<[String]>,
}

/// What the request needs from the layers: who, what, and the headers (for the token).
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub caller: &'a SpiffeId,
    pub method: &'a str,
    pub path: &'a CanonicalPath,
    pub headers: &'a HeaderMap,
    /// The caller's certificate as RFC 8705 `x5t#S256` (base64url SHA-256 of
    /// its DER); `None` only without a connection (`explain`).
    pub leaf_sha256: Option<&'a str>,
    /// Claims a PEP validated (the AuthZEN PDP's `context.claims`), judged
    /// in place of a bearer token.
    pub asserted: Option<&'a serde_json::Map<String, serde_json::Value>>,
    /// Our request id, sent to the external PDP (`X-Request-ID`).
    pub request_id: Option<&'a str>,
}

/// What `policy.mode` makes of a deny: `Err` (refused) in enforce mode;
/// in shadow mode `Ok` with the reason, which is logged and counted as
/// `shadow_deny` while the request goes on.
pub fn apply_mode(mode: PolicyMode, denial: Reason) -> Result<Reason, Reason> {
    match mode {
        PolicyMode::Enforce => Err(denial),
        PolicyMode::Shadow => Ok(denial),
    }
}

/// Layer 2, Layer 3, then Layers 4a and 4b, then the external PDP (`pdp`,
/// when configured and the matched rule is one it applies to); the first
/// deny wins. `oauth` is `None` without a `jwt` section (a policy that
/// needs tokens is refused at load time then; this fails closed anyway).
pub async fn evaluate(
    loaded: &Loaded,
    oauth: Option<&Oauth>,
    governor: &Governor,
    pdp: Option<&Pdp>,
    request: RequestFacts<'_>,
    metrics: Option<&Metrics>,
    trace: &mut Trace,
) -> Result<(), Denial> {
    let started = std::time::Instant::now();
    trace.policy_version = Some(loaded.label.clone());
    let verdict = loaded.engine.decide(policy::engine::Request {
        caller: request.caller,
        method: request.method,
        path: request.path.for_matching(),
    });
    if let Some(metrics) = metrics {
        metrics.policy_eval_duration_seconds.observe(started.elapsed().as_secs_f64());
    }
    // Shared by the cached decision, the trace (the audit event) and a denial.
    trace.policy_ids = verdict.decision.policy_ids;
    let deny = |reason: Reason, trace: &Trace| Denial { reason, policy_ids: trace.policy_ids.clone() };
    trace.jwt.present = request.headers.contains_key(hyper::header::AUTHORIZATION);
    let entry = verdict.entry.and_then(|e| loaded.engine.doc().entries.get(e));
    // The caller's entry names it in the audit event and the per-caller counters, allowed or not.
    trace.entry = entry.map(|e| e.name.clone());
    if !verdict.decision.allow {
        return Err(deny(verdict.decision.reason, trace));
    }
    let Some(entry) = entry else {
        return Err(deny(Reason::NoCallerPolicy, trace));
    };
    trace.entra_agent_id.clone_from(&entry.entra_agent_id);
    let rule = verdict.rule.and_then(|r| entry.rules.get(r));
    let outcome = match (rule, oauth) {
        (None, _) => Ok(Outcome::NotRequired),
        (Some(rule), Some(oauth)) => match request.asserted {
            Some(asserted) => oauth.check_asserted(asserted, entry, rule),
            None => oauth.check(request.headers, entry, rule, request.leaf_sha256).await,
        },
        (Some(rule), None) if rule.require_jwt => {
            Err(policy::jwt::JwtError { reason: Reason::JwksUnavailable, detail: "no jwt configuration" })
        }
        (Some(_), None) => Ok(Outcome::NotRequired),
    };
    let claims = match outcome {
        Ok(Outcome::Valid(claims)) => {
            trace.jwt.valid = true;
            trace.token_exp = Some(claims.exp);
            trace.jwt.azp = claims.client_id.clone();
            trace.jwt.issuer = Some(claims.issuer.clone());
            trace.jwt.bound = matches!(claims.cnf, policy::jwt::CertBinding::X5tS256(_));
            trace.jwt.roles = claims.roles.clone();
            Some(claims)
        }
        Ok(Outcome::NotRequired) => None,
        Err(e) => {
            trace.jwt.error = Some(e.to_string());
            return Err(deny(e.reason, trace));
        }
    };
    let found = governor.check(&loaded.engine.doc().governance, request.caller, entry, rule, claims.as_deref()).await;
    trace.risk_level = found.risk_level;
    trace.caller_tag = found.caller_tag;
    found.verdict.map_err(|reason| deny(reason, trace))?;
    let Some(pdp) = pdp.filter(|p| p.applies(rule)) else { return Ok(()) };
    let question = Question {
        caller: request.caller,
        agent_id: entry.agent_id.as_deref().or(entry.entra_agent_id.as_deref()),
        method: request.method,
        path: request.path.as_str(),
        claims: claims.as_deref(),
        tag_claims: rule.map(|r| &r.required_tags),
        request_id: request.request_id,
    };
    let mut audit = PdpAudit::default();
    let decided = pdp.decide(question, &mut audit).await;
    trace.pdp = Some(audit);
    decided.map_err(|reason| deny(reason, trace))
}

#[cfg(test)]
#[cfg(feature = "dev")]
mod tests {
    use certs::dev::JwtKey;
    use futures_util::FutureExt;
    use policy::jwt::KeySet;
    use policy::{CompileOptions, PathOptions, PolicyEngine, RiskLevel, Source};

    use super::*;
    use crate::config::{Config, MapEnv};
    use crate::facts::jwks::Jwks;

    const TENANT: &str = "aaaaaaaa-0000-4000-8000-000000000001";
    const OID: &str = "00000000-0000-4000-8000-0000000000a1";
    const POLICY: &str = "
version: t1
trust_domain: a.example
default_action: deny
admin_governance: {enabled: true, target_agent_tag: finance}
policies:
  - name: reader
    spiffe_id: spiffe://a.example/reader
    entra_agent_id: 00000000-0000-4000-8000-0000000000a1
    ca: {agent_state: enabled, agent_tag: finance}
    rules:
      - {path: /open, methods: [GET], action: allow}
      - {path: /secure, methods: [GET], action: allow, require_jwt: true, required_roles: [Read]}
      - {path: /closed, methods: ['*'], action: deny}
";

    struct Layers {
        loaded: Loaded,
        oauth: Oauth,
        governor: Governor,
        key: JwtKey,
        caller: SpiffeId,
    }

    impl Layers {
        fn new() -> Self {
            let env = MapEnv::default();
            let config = Config::parse(
                std::path::Path::new("t.yaml"),
                &format!("identity: {{socket: unix:///x}}\njwt: {{tenant_id: '{TENANT}', audiences: [api://t]}}"),
                &env,
            )
            .unwrap();
            let source = Source { name: "policy.yaml".into(), text: POLICY.into() };
            let engine = PolicyEngine::build(&source, &[], &|_| None, CompileOptions::default()).unwrap();
            let key = JwtKey::generate().unwrap();
            let keys = KeySet::from_jwks(serde_json::json!({"keys": [key.jwk().unwrap()]}).to_string().as_bytes());
            let jwks = Jwks::offline(Some(keys.unwrap()), std::sync::Arc::new(Metrics::new().unwrap()));
            let oauth = Oauth::new(config.jwt.as_ref().unwrap(), vec![jwks]);
            let governor = Governor::new(config.risk, config.tags, None, Default::default());
            let caller = "spiffe://a.example/reader".parse().unwrap();
            Self { loaded: Loaded::new(engine, PolicyMode::Enforce, 1), oauth, governor, key, caller }
        }

        fn token(&self, roles: &[&str]) -> String {
            let now = policy::jwt::unix_now();
            let claims = serde_json::json!({
                "aud": "api://t", "iss": format!("https://login.microsoftonline.com/{TENANT}/v2.0"), "tid": TENANT,
                "oid": OID, "azp": "client", "roles": roles, "exp": now + 600, "nbf": now, "iat": now,
            });
            self.key.sign(&claims).unwrap()
        }

        /// The first deny (or `None`) and what the layers found.
        fn judge(&self, method: &str, path: &str, token: Option<&str>) -> (Option<Reason>, Trace) {
            let mut headers = HeaderMap::new();
            if let Some(token) = token {
                headers.insert(hyper::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
            }
            let path = CanonicalPath::parse(path, PathOptions::default()).unwrap();
            let facts = RequestFacts {
                caller: &self.caller,
                method,
                path: &path,
                headers: &headers,
                leaf_sha256: None,
                asserted: None,
                request_id: None,
            };
            let mut trace = Trace::default();
            let judged = evaluate(&self.loaded, Some(&self.oauth), &self.governor, None, facts, None, &mut trace);
            // Nothing here waits on the network: the future is ready at once.
            let result = judged.now_or_never().expect("no remote call");
            (result.err().map(|d| d.reason), trace)
        }
    }

    #[test]
    fn the_first_layer_to_deny_decides() {
        let layers = Layers::new();
        let token = layers.token(&["Read"]);
        let (denied, trace) = layers.judge("GET", "/open", None);
        assert_eq!(denied, None);
        assert_eq!((trace.risk_level, trace.caller_tag.as_deref()), (Some("low"), Some("finance")));

        // Layer 2 before anything: no token is looked at, no risk looked up.
        let (denied, trace) = layers.judge("GET", "/closed", Some("not-a-jwt"));
        assert_eq!(denied, Some(Reason::RuleDenied));
        assert_eq!((trace.jwt.valid, trace.risk_level), (false, None));
        assert_eq!(trace.entry.as_deref(), Some("reader"), "a denied caller is still named by its entry");
        assert_eq!(layers.judge("GET", "/nowhere", None).0, Some(Reason::NoMatchingRule));

        // Layer 3 before 4.
        layers.governor.pushes.set_risk(&layers.caller, Some(RiskLevel::High));
        assert_eq!(layers.judge("GET", "/secure", None).0, Some(Reason::JwtRequired));
        assert_eq!(layers.judge("GET", "/secure", Some(&layers.token(&[]))).0, Some(Reason::InsufficientRoles));
        let (denied, trace) = layers.judge("GET", "/secure", Some(&token));
        assert_eq!(denied, Some(Reason::HighRiskAgentBlocked));
        assert!(trace.jwt.valid && trace.token_exp.is_some());

        // 4a before 4b.
        layers.governor.pushes.set_tag(&layers.caller, Some("marketing".into()));
        assert_eq!(layers.judge("GET", "/open", None).0, Some(Reason::HighRiskAgentBlocked));
        layers.governor.pushes.set_risk(&layers.caller, None);
        let (denied, trace) = layers.judge("GET", "/open", None);
        assert_eq!(denied, Some(Reason::AgentTagMismatch));
        assert_eq!(trace.caller_tag.as_deref(), Some("marketing"));
        layers.governor.pushes.set_tag(&layers.caller, None);
        assert_eq!(layers.judge("GET", "/secure", Some(&token)).0, None);
    }

    #[test]
    fn shadow_mode_lets_a_deny_through_and_enforce_refuses_it() {
        assert_eq!(apply_mode(PolicyMode::Enforce, Reason::RuleDenied), Err(Reason::RuleDenied));
        assert_eq!(apply_mode(PolicyMode::Shadow, Reason::RuleDenied), Ok(Reason::RuleDenied));
    }
}
