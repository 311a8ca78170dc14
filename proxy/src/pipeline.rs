//! Layers 2 and 3 for one request, on one snapshot of the policy: RBAC, then
//! the token the matched rule requires. Layer 1 (the allow-list and the
//! caller's certificate) has already run at the handshake and per request.

use certs::SpiffeId;
use hyper::HeaderMap;
use policy::{CanonicalPath, Reason};

use crate::metrics::Metrics;
use crate::oauth::{Oauth, Outcome};
use crate::policy_store::Loaded;

/// The first layer that denied, and the policies that decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub reason: Reason,
    pub policy_ids: Vec<String>,
}

/// What the request needs from the layers: who, what, and the headers (for the token).
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub caller: &'a SpiffeId,
    pub method: &'a str,
    pub path: &'a CanonicalPath,
    pub headers: &'a HeaderMap,
}

/// Layer 2, then Layer 3. `oauth` is `None` without a `jwt` section (a
/// policy that needs tokens is refused at load time then; this fails closed anyway).
pub async fn evaluate(
    loaded: &Loaded,
    oauth: Option<&Oauth>,
    request: RequestFacts<'_>,
    metrics: Option<&Metrics>,
) -> Result<(), Denial> {
    let started = std::time::Instant::now();
    let verdict = loaded.engine.decide(policy::engine::Request {
        caller: request.caller,
        method: request.method,
        path: request.path.for_matching(),
    });
    if let Some(metrics) = metrics {
        metrics.policy_eval_duration_seconds.observe(started.elapsed().as_secs_f64());
    }
    let policy_ids = verdict.decision.policy_ids;
    if !verdict.decision.allow {
        return Err(Denial { reason: verdict.decision.reason, policy_ids });
    }
    let entry = verdict.entry.and_then(|e| loaded.engine.doc().entries.get(e));
    let (Some(entry), Some(rule)) = (entry, entry.zip(verdict.rule).and_then(|(e, r)| e.rules.get(r))) else {
        return Ok(());
    };
    let outcome = match oauth {
        Some(oauth) => oauth.check(request.headers, entry, rule).await,
        None if rule.require_jwt => {
            Err(policy::jwt::JwtError { reason: Reason::JwksUnavailable, detail: "no jwt configuration" })
        }
        None => Ok(Outcome::NotRequired),
    };
    match outcome {
        Ok(_) => Ok(()),
        Err(e) => Err(Denial { reason: e.reason, policy_ids }),
    }
}
