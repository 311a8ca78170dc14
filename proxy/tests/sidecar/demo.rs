//! The demo's matrix, through the same code path as `a2a-sidecar demo`;
//! and `explain`, asked about each row as it happens, agrees with it, as
//! does budget-backend's AuthZEN PDP (`authzen.listen`) asked the same.

use proxy::cmd::demo::{CALLERS, Caller, Event, Outcome, Stack};
use proxy::cmd::explain::{Question, Verdict, explain};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_demo_case_matches_and_explain_and_the_pdp_agree() {
    let stack = Stack::start().await.unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let mut disagreements = Vec::new();
    let mut explained = 0;
    let outcomes = proxy::cmd::demo::run_matrix(&stack, |event| {
        if let Event::Finished(outcome) = event {
            explained += 1;
            // `explain` runs its own runtime: on a thread of its own, not inside this one.
            let verdicts = std::thread::scope(|s| s.spawn(|| explain_row(&stack, outcome, scratch.path())).join());
            let answers = std::thread::scope(|s| s.spawn(|| pdp_row(&stack, outcome)).join());
            for (caller, answer) in answers.unwrap() {
                if !pdp_agrees(&answer, &outcome.got) {
                    disagreements
                        .push(format!("{} ({caller}): live {:?}, the PDP {answer:?}", outcome.case, outcome.got));
                }
            }
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

/// The row's token as the PEP that validated it passes it to a PDP
/// (`context.claims`, the issuer-independent form); `None`: the PEP refuses
/// such a token itself and asks nobody.
fn asserted_claims(token: &str) -> Option<serde_json::Value> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    let roles = claims.get("roles").or_else(|| claims.pointer("/realm_access/roles")).cloned();
    let mut asserted = serde_json::json!({
        "iss": claims["iss"],
        "azp": claims.get("azp").or_else(|| claims.get("appid")).cloned(),
        "roles": roles.unwrap_or_else(|| serde_json::json!([])),
    });
    if let Some(oid) = claims.get("oid") {
        asserted["oid"] = oid.clone();
    }
    if let Some(cnf) = claims.get("cnf") {
        asserted["cnf"] = cnf.clone();
    }
    Some(asserted)
}

/// budget-backend's AuthZEN PDP asked about the row's request(s), with the
/// claims of the token the caller presented: `(decision, reason)`, or
/// `None` for rows a PDP is never asked about (a token the PEP refuses
/// itself: malformed, or bound to another connection's certificate).
fn pdp_row(stack: &Stack, outcome: &Outcome) -> Vec<(&'static str, Option<(bool, String)>)> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let request: Vec<&str> = outcome.request.split(' ').collect();
    let [.., method, path] = request.as_slice() else { panic!("{outcome:?}") };
    let addr = stack.backend.authzen_addr.unwrap();
    caller_names(outcome.caller)
        .into_iter()
        .map(|caller| {
            let token = match (outcome.case, stack.app_token(outcome.case)) {
                ("L3: app's own token invalid" | "L3 RFC 8705: another's SVID", _) => return (caller.name, None),
                (_, Some((token, _))) => Some(token),
                _ => stack.token_for(caller).unwrap(),
            };
            let mut body = serde_json::json!({
                "subject": {"type": "spiffe_id", "id": caller.id},
                "action": {"name": method},
                "resource": {"type": "http_path", "id": path},
            });
            if let Some(claims) = token.as_deref().and_then(asserted_claims) {
                body["context"] = serde_json::json!({ "claims": claims });
            }
            let (route, key, json) = ("/access/v1/evaluation", Some(stack.admin_key.as_str()), body.to_string());
            let headers = [("content-type", "application/json")];
            let (status, _, answer) =
                runtime.block_on(super::mgmt::call(addr, "POST", route, key, Some(&json), &headers));
            assert_eq!(status, 200, "{answer}");
            let decision = answer["decision"].as_bool().unwrap();
            (caller.name, Some((decision, answer["context"]["reason"].as_str().unwrap().to_owned())))
        })
        .collect()
}

/// The live answer and the PDP's, for the same request.
fn pdp_agrees(answer: &Option<(bool, String)>, live: &str) -> bool {
    let Some((decision, reason)) = answer else { return true };
    match live {
        "200 allowed" | "all 200, rotated" | "true allowed" => *decision,
        // The PDP listener answers for the policy; it does not ask the external PDP.
        "403 pdp_denied" | "503 pdp_unavailable" => *decision,
        // Layer 1: refused at the handshake, or on a pooled connection.
        "502 upstream_rejected_identity" | "403 not_allowed" => !decision && reason == "not_allowed",
        _ => !decision && live.split_once(' ').is_some_and(|(_, live_reason)| live_reason == reason),
    }
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
