//! Layers 2 to 4 for one request, on one snapshot of the policy: RBAC, the
//! token the matched rule requires, then risk and tags. Layer 1 (the
//! allow-list and the caller's certificate) has already run at the
//! handshake and per request.

use std::sync::Arc;

use certs::SpiffeId;
use hyper::HeaderMap;
use policy::{CanonicalPath, Reason};

use crate::layers::governance::Governor;
use crate::layers::oauth::{Oauth, Outcome};
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
}

/// Layer 2, Layer 3, then Layers 4a and 4b; the first deny wins. `oauth`
/// is `None` without a `jwt` section (a policy that needs tokens is refused
/// at load time then; this fails closed anyway).
pub async fn evaluate(
    loaded: &Loaded,
    oauth: Option<&Oauth>,
    governor: &Governor,
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
    if !verdict.decision.allow {
        return Err(deny(verdict.decision.reason, trace));
    }
    let Some(entry) = verdict.entry.and_then(|e| loaded.engine.doc().entries.get(e)) else {
        return Err(deny(Reason::NoCallerPolicy, trace));
    };
    trace.entry = Some(entry.name.clone());
    trace.entra_agent_id.clone_from(&entry.entra_agent_id);
    let rule = verdict.rule.and_then(|r| entry.rules.get(r));
    let outcome = match (rule, oauth) {
        (None, _) => Ok(Outcome::NotRequired),
        (Some(rule), Some(oauth)) => oauth.check(request.headers, entry, rule).await,
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
    found.verdict.map_err(|reason| deny(reason, trace))
}
