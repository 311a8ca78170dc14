//! `GET /mgmt/health` (no key): identity, policy and facts at a glance.

use std::time::SystemTime;

use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use super::{Context, merge};
use crate::admin::json_response;
use crate::config::FactSource;
use crate::dataplane::body::Body;
use crate::facts::graph::Freshness;
use crate::observe::audit::rfc3339;

pub(super) fn health(ctx: &Context) -> Response<Body> {
    let current = ctx.identity.current();
    let expiry = current.as_ref().map(|i| i.svid().not_after());
    let ttl = expiry.and_then(|e| e.duration_since(SystemTime::now()).ok()).map(|d| d.as_secs());
    let status = ctx.identity.status();
    // The same truth as `/readyz` (a configured policy is always loaded: a bad one refuses to start).
    let not_ready = if ctx.terminating.load(std::sync::atomic::Ordering::Acquire) {
        Some("shutting down")
    } else {
        crate::observe::telemetry::not_ready_reason(&ctx.identity)
    };
    let loaded = ctx.policy.as_ref().map(|p| p.current());
    let graph = ctx.governor.graph_freshness();
    let governance = ctx.governor.settings();
    json_response(
        StatusCode::OK,
        &json!({
            "status": if not_ready.is_none() { "healthy" } else { "unhealthy" },
            "reason": not_ready,
            "policy_version": loaded.as_ref().map(|l| l.label.clone()),
            // Layers 2-4 enforce, or (shadow) only log what they would deny.
            "enforcement_mode": loaded.as_ref().map(|l| l.mode.as_str()),
            "policy_loaded_at": loaded.as_ref().map(|l| rfc3339(l.loaded_at)),
            "uptime_seconds": ctx.started.elapsed().as_secs(),
            "spire_agent_connected": status.connected,
            // What the identity source last failed with (kept until its next success).
            "identity_error": status.last_error,
            // Federated bundles left out of the last update (the rest was used).
            "rejected_bundles": status.rejected_bundles.iter()
                .map(|r| json!({"trust_domain": r.trust_domain, "error": r.error}))
                .collect::<Vec<_>>(),
            "svid_expiry": expiry.map(rfc3339),
            "svid_ttl_seconds": ttl,
            "risk_enforcement_control_supported": true,
            "entra_risk_enforcement_supported": governance.risk.source == FactSource::Graph,
            // Over every issuer: the stalest refresh and the first error.
            "jwks": ctx.oauth.load_full().map(|o| {
                let statuses: Vec<_> = o.issuers().iter().map(|i| i.jwks.status()).collect();
                let stalest = statuses.iter().map(|s| s.last_refresh).min().flatten();
                let error = statuses.iter().find_map(|s| s.last_error.clone());
                json!({"last_refresh": stalest.map(rfc3339), "last_error": error})
            }),
            "risk": freshness(governance.risk.source, "mgmt", graph.as_ref().map(|(risk, _)| risk)),
            "tags": freshness(governance.tags.source, "policy", graph.as_ref().map(|(_, tags)| tags)),
        }),
    )
}

/// A fact's source and, from Graph, when it last answered; local facts
/// (pushes, the policy file) are always current.
fn freshness(source: FactSource, local: &str, graph: Option<&Freshness>) -> Value {
    match (source, graph) {
        (FactSource::Graph, Some(f)) => {
            let mut state = graph_state(Some(f));
            merge(&mut state, json!({"source": "graph"}));
            state
        }
        _ => json!({"source": local}),
    }
}

/// When Graph last answered a look-up, how long ago, and the failure since
/// then, if any (all `null` for a local source).
pub(super) fn graph_state(graph: Option<&Freshness>) -> Value {
    let last_success = graph.and_then(|f| f.last_success);
    json!({
        "last_success": last_success.map(rfc3339),
        "age_seconds": last_success.map(|at| SystemTime::now().duration_since(at).unwrap_or_default().as_secs()),
        "last_error": graph.and_then(|f| f.last_error.as_deref()),
    })
}
