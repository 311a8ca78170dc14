//! `GET /mgmt/ca-policy-effective`: Layers 4a and 4b as they run now
//! (sources, blocked levels, pushes, Graph freshness).

use hyper::{Response, StatusCode};
use serde_json::json;

use super::health::graph_state;
use super::{Context, merge};
use crate::admin::json_response;
use crate::config::FactSource;
use crate::dataplane::body::Body;
use crate::facts::graph::Freshness;

pub(super) fn effective(ctx: &Context) -> Response<Body> {
    let g = ctx.governor.settings();
    let source =
        |s: FactSource, local: &str| if s == FactSource::Graph { "graph".to_owned() } else { local.to_owned() };
    let doc = ctx.policy.as_ref().map(|p| p.current());
    let graph = ctx.governor.graph_freshness();
    let from_graph = |s: FactSource, f: Option<&Freshness>| graph_state(f.filter(|_| s == FactSource::Graph));
    let mut risk = json!({
        "source": source(g.risk.source, "mgmt"),
        "blocked_levels": g.risk.blocked_levels.iter().map(|l| l.as_str()).collect::<Vec<_>>(),
        "on_unavailable": g.risk.on_unavailable.as_str(),
        "pushed": ctx.governor.pushes.risks().len(),
    });
    merge(&mut risk, from_graph(g.risk.source, graph.as_ref().map(|(risk, _)| risk)));
    let mut tags = json!({
        "source": source(g.tags.source, "policy"),
        "on_unavailable": g.tags.on_unavailable.as_str(),
        "pushed": ctx.governor.pushes.tags().len(),
    });
    merge(&mut tags, from_graph(g.tags.source, graph.as_ref().map(|(_, tags)| tags)));
    json_response(
        StatusCode::OK,
        &json!({
            // The reference portal reads these four.
            "source": "ca_policy_cache",
            "enabled": doc.as_ref().is_some_and(|d| d.engine.doc().governance.enabled),
            "ready": doc.is_some(),
            "blocked_risk_levels": g.risk.blocked_levels.iter().map(|l| l.as_str()).collect::<Vec<_>>(),
            "governance_enabled": doc.as_ref().map(|d| d.engine.doc().governance.enabled),
            "target_agent_tag": doc.as_ref().map(|d| d.engine.doc().governance.target_agent_tag.clone()),
            "risk": risk,
            "tags": tags,
            "state_last_change": ctx.state.get().last_change,
            "state_last_change_at": ctx.state.get().last_change_at,
        }),
    )
}
