//! Reload is all or nothing: every field either applies at reload (the
//! enforcement mode, admin keys, risk and tag settings, the policy file's
//! path, the allow-list) or the reload is refused as a whole with 409 naming
//! the fields only a restart can change; nothing is half-applied.

use std::time::Duration;

use serde_json::Value;

use super::mesh::{ADMIN_KEY, Mesh, REPORT, VIEWER_KEY};
use super::mgmt::call;
use super::support::{get, raw_exchange, statuses};

const STRICT: &str = "version: strict
trust_domain: aim.microsoft.com
default_action: deny
policies:
  - {name: budget-report, spiffe_id: 'spiffe://aim.microsoft.com/ests/bp/b1/aid/budget-report', rules: [{path: /read, methods: [GET], action: allow}]}
";

async fn status_of(mesh: &Mesh, sidecar: &proxy::app::App, path: &str) -> (u16, String) {
    let raw = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let tls = mesh.client_tls(REPORT, &[b"http/1.1"]);
    let out = raw_exchange(sidecar.inbound_addr.unwrap(), tls, raw.as_bytes(), Duration::from_secs(10)).await;
    let reason = out.split("\"reason\":\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or_default().to_owned();
    (statuses(&out).first().copied().unwrap_or(0), reason)
}

async fn health(sidecar: &proxy::app::App) -> Value {
    call(sidecar.mgmt_addr.unwrap(), "GET", "/mgmt/health", None, None, &[]).await.2
}

async fn reload(sidecar: &proxy::app::App) -> (u16, Value) {
    let (status, _, body) = call(sidecar.mgmt_addr.unwrap(), "POST", "/mgmt/reload", Some(ADMIN_KEY), None, &[]).await;
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_every_hot_field_or_refuses_naming_what_needs_a_restart() {
    let mesh = Mesh::start().await;
    std::fs::write(mesh.dir.path().join("strict.yaml"), STRICT).unwrap();
    let yaml = mesh
        .sidecar_yaml("reloading", mesh.app.addr)
        .replace("policy: {file: policy.yaml}", "policy: {file: strict.yaml, mode: shadow}")
        + "risk: {blocked_levels: [high]}\n";
    let sidecar = mesh.start_sidecar("reloading", &yaml).await;
    let path = mesh.dir.path().join("reloading.yaml");

    // Shadow mode: what Layer 2 would deny is forwarded.
    assert_eq!(status_of(&mesh, &sidecar, "/write").await.0, 200);
    assert_eq!(health(&sidecar).await["enforcement_mode"], "shadow");
    let metrics = get(sidecar.telemetry_addr, "/metrics").await.1;
    assert!(metrics.contains("a2a_policy_mode{mode=\"shadow\"} 1"), "{metrics}");
    let mgmt = sidecar.mgmt_addr.unwrap();
    assert_eq!(call(mgmt, "GET", "/mgmt/audit", Some(VIEWER_KEY), None, &[]).await.0, 200);

    // The documented rollout: shadow -> enforce; and a key removed, medium risk blocked.
    let portal = yaml.lines().find(|l| l.contains("name: portal")).unwrap();
    let edited = yaml
        .replace("mode: shadow", "mode: enforce")
        .replace(&format!("{portal}\n"), "")
        .replace("blocked_levels: [high]", "blocked_levels: [medium, high]");
    std::fs::write(&path, &edited).unwrap();
    assert_eq!(reload(&sidecar).await.0, 200);

    assert_eq!(status_of(&mesh, &sidecar, "/write").await, (403, "no_matching_rule".into()));
    assert_eq!(health(&sidecar).await["enforcement_mode"], "enforce");
    let metrics = get(sidecar.telemetry_addr, "/metrics").await.1;
    assert!(metrics.contains("a2a_policy_mode{mode=\"enforce\"} 1"), "{metrics}");
    assert_eq!(call(mgmt, "GET", "/mgmt/audit", Some(VIEWER_KEY), None, &[]).await.0, 401, "a removed key works");
    let push = format!(r#"{{"spiffe_id": "{REPORT}", "risk_level": "medium"}}"#);
    assert_eq!(call(mgmt, "PUT", "/mgmt/agent-risk", Some(ADMIN_KEY), Some(&push), &[]).await.0, 200);
    assert_eq!(status_of(&mesh, &sidecar, "/read").await, (403, "high_risk_agent_blocked".into()));

    // Restart-only fields refuse the whole reload, naming each; the hot change beside them waits too.
    let refused = edited
        .replace("upstream_response_timeout: 10s", "upstream_response_timeout: 20s")
        .replace("log_format: text", "log_format: json")
        .replace("blocked_levels: [medium, high]", "blocked_levels: [high]");
    std::fs::write(&path, refused).unwrap();
    let (status, body) = reload(&sidecar).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "restart_required");
    assert_eq!(body["fields"], serde_json::json!(["telemetry.log_format", "inbound.upstream_response_timeout"]));
    assert_eq!(status_of(&mesh, &sidecar, "/read").await.1, "high_risk_agent_blocked", "half-applied");

    // A broken file: 400, nothing changes.
    std::fs::write(&path, "inbound: [").unwrap();
    let (status, body) = reload(&sidecar).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("reload_failed")), "{body}");
    assert_eq!(health(&sidecar).await["enforcement_mode"], "enforce");
}
