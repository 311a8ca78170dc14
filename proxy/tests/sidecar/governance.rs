//! Layers 4a and 4b through real sidecars: the reference matrix's risk, tag
//! and disabled-agent rows, pushes overriding the policy, required tags.

use std::time::Duration;

use proxy::cmd::dev_idp::TokenSpec;

use super::mesh::{AUDIENCE, Mesh, REPORT, REPORT_OID, TENANT, reference_policy};
use super::support::{Reply, http};

async fn read(mesh: &Mesh, token: &str) -> Reply {
    let auth = format!("Bearer {token}");
    http(mesh.report.outbound_addr.unwrap(), "GET", "budget-backend", "/budget/read", &[("authorization", &auth)]).await
}

/// An operator's push through the real admin API (`null` removes it).
async fn push(mesh: &Mesh, route: &str, field: &str, value: Option<&str>) {
    let body = serde_json::json!({"spiffe_id": REPORT, field: value}).to_string();
    let mgmt = mesh.backend.mgmt_addr.unwrap();
    let (status, _, answer) =
        super::mgmt::call(mgmt, "PUT", route, Some(super::mesh::ADMIN_KEY), Some(&body), &[]).await;
    assert_eq!(status, 200, "{route} {body}: {answer}");
}

fn token(mesh: &Mesh, extra_roles: &[&str]) -> String {
    let mut roles = vec!["Budget.Read".to_owned()];
    roles.extend(extra_roles.iter().map(|r| (*r).to_owned()));
    let spec = TokenSpec {
        tenant: TENANT.into(),
        audiences: vec![AUDIENCE.into()],
        client_id: "report-client".into(),
        oid: REPORT_OID.into(),
        roles,
        ttl: Duration::from_secs(600),
        v1: false,
        cnf_x5t: None,
    };
    mesh.idp.token(&spec).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn risk_tags_and_agent_state_rows_of_the_reference_matrix() {
    let (policy, env) = reference_policy();
    let mesh = Mesh::start_with_policy(&policy, env).await;
    let token = token(&mesh, &[]);
    assert_eq!(read(&mesh, &token).await.status, 200, "finance tag, low risk");
    // The app learns the caller's Entra agent from its policy entry, never from the caller.
    let auth = format!("Bearer {token}");
    let spoofed = [("authorization", auth.as_str()), ("x-spiffe-entra-agent-id", "attacker-chosen")];
    let reply = http(mesh.report.outbound_addr.unwrap(), "GET", "budget-backend", "/budget/read", &spoofed).await;
    assert_eq!(reply.status, 200);
    assert_eq!(mesh.app.seen().pop().unwrap().header("x-spiffe-entra-agent-id"), Some(REPORT_OID));

    push(&mesh, "/mgmt/agent-risk", "risk_level", Some("high")).await;
    let reply = read(&mesh, &token).await;
    assert_eq!((reply.status, reply.denied()), (403, ("risk".into(), "high_risk_agent_blocked".into())));
    push(&mesh, "/mgmt/agent-risk", "risk_level", Some("medium")).await;
    assert_eq!(read(&mesh, &token).await.status, 200, "medium is not blocked by default");
    push(&mesh, "/mgmt/agent-risk", "risk_level", None).await;
    assert_eq!(read(&mesh, &token).await.status, 200, "risk reset");

    // A pushed tag overrides the policy's `ca.agent_tag`; an empty tag mismatches too.
    push(&mesh, "/mgmt/agent-tags", "tag", Some("hr")).await;
    let reply = read(&mesh, &token).await;
    assert_eq!((reply.status, reply.denied()), (403, ("tags".into(), "agent_tag_mismatch".into())));
    push(&mesh, "/mgmt/agent-tags", "tag", Some("")).await;
    assert_eq!(read(&mesh, &token).await.denied().1, "agent_tag_mismatch");
    push(&mesh, "/mgmt/agent-tags", "tag", None).await;
    assert_eq!(read(&mesh, &token).await.status, 200);

    // The admin kill switch in the policy.
    let disabled = policy.replacen("agent_state: enabled", "agent_state: disabled", 1);
    std::fs::write(&mesh.policy_file, disabled).unwrap();
    mesh.set_allowed(&[REPORT, super::mesh::APPROVAL]).await;
    let reply = read(&mesh, &token).await;
    assert_eq!((reply.status, reply.denied()), (403, ("risk".into(), "agent_disabled".into())));
    assert_eq!(mesh.app.paths().len(), 5, "only the allowed requests reached the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_tags_are_matched_against_the_tokens_claims() {
    let policy = "version: '5'
trust_domain: aim.microsoft.com
default_action: deny
policies:
  - name: budget-report
    spiffe_id: 'spiffe://aim.microsoft.com/ests/bp/b1/aid/budget-report'
    entra_agent_id: '00000000-0000-4000-8000-0000000000a1'
    rules:
      - {path: /budget/read, methods: [GET], action: allow, require_jwt: true, required_tags: {ver: '2.0', repo: 'budget-tools'}}
";
    let mesh = Mesh::start_with_policy(policy, Default::default()).await;
    let plain = token(&mesh, &[]);
    let reply = read(&mesh, &plain).await;
    assert_eq!((reply.status, reply.denied()), (403, ("tags".into(), "missing_required_tag".into())));

    let mut claims = mesh.idp.claims(&TokenSpec {
        tenant: TENANT.into(),
        audiences: vec![AUDIENCE.into()],
        client_id: "report-client".into(),
        oid: REPORT_OID.into(),
        roles: vec![],
        ttl: Duration::from_secs(600),
        v1: false,
        cnf_x5t: None,
    });
    claims.as_object_mut().unwrap().insert("repo".into(), "budget-tools".into());
    let tagged = mesh.idp.current_key().unwrap().sign(&claims).unwrap();
    assert_eq!(read(&mesh, &tagged).await.status, 200);
}
