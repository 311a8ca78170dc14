//! The reference prototype's portal and admin control plane drive `/mgmt/*`
//! with `X-Spiffe-Admin-Key`. This replays their request shapes (bodies,
//! content types, query strings) and checks every response field they read,
//! per the reference `internal/mgmt/server.go`.

use serde_json::Value;

use super::mesh::{ADMIN_KEY, MENUS, Mesh, OPEN_POLICY, REPORT, reference_policy};
use super::mgmt::call;

fn has(body: &Value, fields: &[&str]) {
    for field in fields {
        assert!(body.get(field).is_some_and(|v| !v.is_null()), "missing `{field}` in {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_portal_requests_get_the_fields_it_reads() {
    let mesh = Mesh::start().await;
    let mgmt = mesh.backend.mgmt_addr.unwrap();
    let key = Some(ADMIN_KEY);
    let json = [("content-type", "application/json")];

    let (status, _, health) = call(mgmt, "GET", "/mgmt/health", key, None, &[]).await;
    assert_eq!(status, 200);
    has(
        &health,
        &[
            "status",
            "policy_version",
            "policy_loaded_at",
            "uptime_seconds",
            "spire_agent_connected",
            "svid_expiry",
            "svid_ttl_seconds",
            "risk_enforcement_control_supported",
            "entra_risk_enforcement_supported",
        ],
    );

    assert_eq!((health["risk"]["source"].as_str(), health["tags"]["source"].as_str()), (Some("mgmt"), Some("policy")));

    // Policy: GET, then PUT the YAML as `application/x-yaml` (how the portal sends it).
    let (_, _, policy) = call(mgmt, "GET", "/mgmt/policy", key, None, &[]).await;
    has(&policy, &["policy", "loaded_at"]);
    has(&policy["policy"], &["version", "trust_domain", "default_action", "policies"]);
    let yaml = OPEN_POLICY.replacen("version: '1'", "version: '2'", 1);
    let (status, _, put) =
        call(mgmt, "PUT", "/mgmt/policy", key, Some(&yaml), &[("content-type", "application/x-yaml")]).await;
    assert_eq!(status, 200, "{put}");
    has(&put, &["status", "old_version", "new_version", "loaded_at"]);
    assert_eq!((put["status"].as_str(), put["old_version"].as_str()), (Some("updated"), Some("1")));
    assert_eq!(put["new_version"], "2");

    // mTLS allow-list: GET, PUT {allowed_ids}; the answer carries old and new lists.
    let (_, _, mtls) = call(mgmt, "GET", "/mgmt/mtls-policy", key, None, &[]).await;
    has(&mtls, &["mode", "allowed_ids", "count"]);
    let body = serde_json::json!({"allowed_ids": [REPORT, MENUS]}).to_string();
    let (status, _, put) = call(mgmt, "PUT", "/mgmt/mtls-policy", key, Some(&body), &json).await;
    assert_eq!(status, 200);
    has(&put, &["status", "old_allowed_ids", "new_allowed_ids", "old_count", "new_count"]);
    assert_eq!((put["old_count"].as_u64(), put["new_count"].as_u64()), (Some(2), Some(2)));
    let (status, _, err) = call(mgmt, "PUT", "/mgmt/mtls-policy", key, Some(r#"{"allowed_ids": []}"#), &json).await;
    assert_eq!(status, 400);
    assert!(err["error"].is_string(), "errors are {{\"error\": ...}}: {err}");

    // Risk: PUT {spiffe_id, risk_level}, GET all, GET ?spiffe_id=.
    let body = serde_json::json!({"spiffe_id": REPORT, "risk_level": "medium"}).to_string();
    let (status, _, put) = call(mgmt, "PUT", "/mgmt/agent-risk", key, Some(&body), &json).await;
    assert_eq!(status, 200);
    has(&put, &["status", "spiffe_id", "risk_level", "previous_level"]);
    assert_eq!((put["risk_level"].as_str(), put["previous_level"].as_str()), (Some("medium"), Some("low")));
    let (_, _, all) = call(mgmt, "GET", "/mgmt/agent-risk", key, None, &[]).await;
    has(&all, &["risks", "count", "default_level"]);
    assert_eq!(all["risks"][REPORT], "medium");
    let query = format!("/mgmt/agent-risk?spiffe_id={REPORT}");
    let (_, _, one) = call(mgmt, "GET", &query, key, None, &[]).await;
    assert_eq!((one["spiffe_id"].as_str(), one["risk_level"].as_str()), (Some(REPORT), Some("medium")));
    for route in ["agent-risk", "agent-tags"] {
        let (status, _, err) = call(mgmt, "GET", &format!("/mgmt/{route}?spiffe_id=nope"), key, None, &[]).await;
        assert_eq!((status, err["error"].as_str()), (400, Some("invalid_spiffe_id")), "{route}");
    }

    // Tags: PUT {spiffe_id, tag}, GET all, GET ?spiffe_id=.
    let body = serde_json::json!({"spiffe_id": MENUS, "tag": "finance"}).to_string();
    let (status, _, put) = call(mgmt, "PUT", "/mgmt/agent-tags", key, Some(&body), &json).await;
    assert_eq!(status, 200);
    has(&put, &["status", "spiffe_id", "tag", "previous_tag", "source"]);
    let (_, _, all) = call(mgmt, "GET", "/mgmt/agent-tags", key, None, &[]).await;
    has(&all, &["tags", "count", "source"]);
    let query = format!("/mgmt/agent-tags?spiffe_id={MENUS}");
    let (_, _, one) = call(mgmt, "GET", &query, key, None, &[]).await;
    assert_eq!((one["tag"].as_str(), one["found"].as_bool()), (Some("finance"), Some(true)));
    has(&one, &["spiffe_id", "source"]);

    // Read-only routes.
    let (_, _, audit) = call(mgmt, "GET", "/mgmt/audit?limit=5&decision=allow", key, None, &[]).await;
    has(&audit, &["count", "entries"]);
    let entries = audit["entries"].as_array().unwrap();
    assert!((1..=5).contains(&entries.len()) && audit["count"] == entries.len(), "{audit}");
    assert!(entries.iter().all(|e| e["decision"] == "allow"), "{audit}");
    let (status, _, metrics) = call(mgmt, "GET", "/mgmt/metrics", key, None, &[]).await;
    assert_eq!(status, 200);
    has(&metrics, &["total_requests", "total_allowed", "total_denied", "per_caller"]);
    let (_, _, oauth) = call(mgmt, "GET", "/mgmt/oauth-status", key, None, &[]).await;
    has(&oauth, &["config_loaded"]);
    let (_, _, effective) = call(mgmt, "GET", "/mgmt/ca-policy-effective", key, None, &[]).await;
    has(&effective, &["source", "enabled", "ready", "blocked_risk_levels"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_policy_answers_in_the_reference_yamls_shape_and_round_trips() {
    let (yaml, env) = reference_policy();
    let mesh = Mesh::start_with_policy(&yaml, env).await;
    let mgmt = mesh.backend.mgmt_addr.unwrap();
    let key = Some(ADMIN_KEY);
    let (_, _, got) = call(mgmt, "GET", "/mgmt/policy", key, None, &[]).await;
    let policy = &got["policy"];

    // Every entry and rule of the file, under the file's own field names.
    let file: Value = serde_norway::from_str(&yaml).unwrap();
    for list in ["policies", "federated_policies"] {
        let (want, have) = (file[list].as_array().unwrap(), policy[list].as_array().unwrap());
        assert_eq!(want.len(), have.len(), "{list}: {policy}");
        for (w, h) in want.iter().zip(have) {
            assert_eq!(w["name"], h["name"]);
            assert!(h.get("spiffe_id").or_else(|| h.get("spiffe_id_prefix")).is_some(), "{h}");
            let (w_rules, h_rules) = (w["rules"].as_array().unwrap(), h["rules"].as_array().unwrap());
            assert_eq!(w_rules.len(), h_rules.len(), "{}", h["name"]);
            for (wr, hr) in w_rules.iter().zip(h_rules) {
                assert_eq!((&wr["path"], &wr["action"]), (&hr["path"], &hr["action"]), "{}", h["name"]);
                has(hr, &["methods", "require_jwt", "required_roles", "required_tags"]);
            }
        }
    }
    // The enriched IDs show (the file holds placeholders and a shared prefix).
    let google = &policy["federated_policies"][0];
    assert_eq!(google["spiffe_id"], "spiffe://gcp.aim.microsoft.com/ests/bp/g1/aid/google", "{google}");
    assert_eq!(policy["policies"][0]["entra_agent_id"], super::mesh::REPORT_OID);

    // What GET answers, PUT takes back (JSON is YAML), and it decides the same.
    let body = policy.to_string();
    let (status, _, put) = call(mgmt, "PUT", "/mgmt/policy", key, Some(&body), &[]).await;
    assert_eq!(status, 200, "{put}");
    let (_, _, again) = call(mgmt, "GET", "/mgmt/policy", key, None, &[]).await;
    assert_eq!(&again["policy"], policy);
}
