//! The demo's matrix, through the same code path as `a2a-sidecar demo`;
//! and `explain`, asked about each row as it happens, agrees with it.

use proxy::cmd::demo::{CALLERS, Caller, Event, Outcome, Stack};
use proxy::cmd::explain::{Question, Verdict, explain};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_demo_case_matches_and_explain_agrees() {
    let stack = Stack::start().await.unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let mut disagreements = Vec::new();
    let mut explained = 0;
    let outcomes = proxy::cmd::demo::run_matrix(&stack, |event| {
        if let Event::Finished(outcome) = event {
            explained += 1;
            // `explain` runs its own runtime: on a thread of its own, not inside this one.
            let verdicts = std::thread::scope(|s| s.spawn(|| explain_row(&stack, outcome, scratch.path())).join());
            for (caller, verdict) in verdicts.unwrap() {
                if !agrees(verdict, &outcome.got) {
                    disagreements
                        .push(format!("{} ({caller}): live {:?}, explain {verdict:?}", outcome.case, outcome.got));
                }
            }
        }
    })
    .await
    .unwrap();
    let failed: Vec<_> = outcomes.iter().filter(|o| !o.matched()).collect();
    assert!(failed.is_empty(), "{failed:#?}");
    assert_eq!(explained, outcomes.len());
    assert!(disagreements.is_empty(), "explain and the running sidecar disagree:\n{}", disagreements.join("\n"));
    // Each layer denies at least once (Layer 1 refuses the handshake, which the caller's sidecar reports).
    for (layer, reason) in [
        ("upstream", "upstream_rejected_identity"),
        ("rbac", "rule_denied"),
        ("oauth", "jwt_required"),
        ("oauth", "insufficient_roles"),
        ("risk", "high_risk_agent_blocked"),
        ("tags", "agent_tag_mismatch"),
        ("oauth", "jwt_not_bound"),
        ("pdp", "pdp_denied"),
        ("pdp", "pdp_unavailable"),
    ] {
        assert!(outcomes.iter().any(|o| o.layer == layer && o.reason == reason), "no {layer}/{reason}");
    }
    assert!(outcomes.iter().filter(|o| o.reason == "allowed").count() >= 8);
}

/// `explain` for the row's request(s), with what the live sidecar knew:
/// the backend's config and state file, the caller's token and the
/// tenant's keys, and what Graph says of the caller.
fn explain_row(stack: &Stack, outcome: &Outcome, scratch: &std::path::Path) -> Vec<(&'static str, Verdict)> {
    let config = stack.backend_config().unwrap();
    // Offline, the keys stand in for every issuer's: both issuers' keys.
    let jwks = scratch.join("jwks.json");
    let mut keys = stack.idp.jwks()["keys"].as_array().unwrap().clone();
    keys.extend(stack.keycloak.jwks()["keys"].as_array().unwrap().iter().cloned());
    std::fs::write(&jwks, serde_json::json!({ "keys": keys }).to_string()).unwrap();
    let app_token = stack.app_token(outcome.case);
    let cert = app_token.as_ref().and_then(|(_, cert)| cert.as_ref()).map(|der| {
        use base64::Engine as _;
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::engine::general_purpose::STANDARD.encode(der)
        );
        let path = scratch.join("caller.pem");
        std::fs::write(&path, pem).unwrap();
        path
    });
    // "<method> <path>", or "<n> x <method> <path>" for the rotation run (two callers).
    let request: Vec<&str> = outcome.request.split(' ').collect();
    let ([.., method, path], callers) = (request.as_slice(), caller_names(outcome.caller)) else {
        panic!("{outcome:?}");
    };
    callers
        .into_iter()
        .map(|caller| {
            let token = match (outcome.case, &app_token) {
                // The app sent its own token; the caller's sidecar passed it on.
                ("L3: app's own token invalid", _) => Some("not-a-jwt".to_owned()),
                (_, Some((token, _))) => Some(token.clone()),
                _ => stack.token_for(caller).unwrap(),
            };
            let oid = caller.oid.unwrap_or_default();
            let question = Question {
                caller: caller.id,
                method,
                path,
                token: token.as_deref(),
                jwks: token.as_ref().map(|_| jwks.as_path()),
                cert: cert.as_deref(),
                graph_risk: Some(
                    stack.idp.graph_risk(oid).map_or(policy::RiskLevel::None, |(l, _)| l.parse().unwrap()),
                ),
                graph_tag: stack.idp.graph_attribute(oid, "AgentIdentity", "Department"),
            };
            (caller.name, explain(&config, &question).unwrap().verdict)
        })
        .collect()
}

fn caller_names(names: &str) -> Vec<Caller> {
    let by_name = |name: &str| CALLERS.into_iter().find(|c| c.name == name || c.name.contains(name));
    names.split(" + ").map(|name| by_name(name).unwrap_or_else(|| panic!("no caller {name}"))).collect()
}

/// The live answer as the caller's app saw it, and the verdict `explain` gave.
fn agrees(verdict: Verdict, live: &str) -> bool {
    // An AuthZEN evaluation's row: the decision and its reason.
    if let Some(reason) = live.strip_prefix("false ") {
        return matches!(verdict, Verdict::Denied(r) if r.as_str() == reason);
    }
    // Offline, `explain` does not ask the external PDP: Layers 1-4 allowed.
    if live == "403 pdp_denied" || live == "503 pdp_unavailable" || live == "true allowed" {
        return verdict == Verdict::Forwarded;
    }
    match verdict {
        Verdict::Forwarded | Verdict::ShadowForwarded(_) => live == "200 allowed" || live == "all 200, rotated",
        // Refused at the handshake (the caller's sidecar reports it), or on
        // a pooled connection by the per-request check.
        Verdict::Denied(policy::Reason::NotAllowed) => {
            live == "502 upstream_rejected_identity" || live == "403 not_allowed"
        }
        Verdict::Denied(reason) => {
            let (status, _) = proxy::dataplane::deny::status_of(reason);
            live == format!("{} {reason}", status.as_u16())
        }
    }
}
