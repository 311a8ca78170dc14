//! Layer 2 through real sidecars: the reference policy's RBAC rows, shadow
//! mode, and hot reload under traffic.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::mesh::{Mesh, OPEN_POLICY, REPORT, reference_policy};
use super::support::{eventually, get, http};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_policy_rbac_rows() {
    let (policy, env) = reference_policy();
    let mesh = Mesh::start_with_policy(&policy, env).await;
    let out = mesh.report.outbound_addr.unwrap();

    // RBAC denies report's submit outright (rule 1).
    let reply = http(out, "POST", "budget-backend", "/budget/submit", &[]).await;
    assert_eq!((reply.status, reply.denied()), (403, ("rbac".into(), "rule_denied".into())));

    // RBAC allows report's read (rule 0); the next layer (JWT) decides, not RBAC.
    let reply = http(out, "GET", "budget-backend", "/budget/read", &[]).await;
    let (layer, reason) = reply.denied();
    assert_ne!(layer, "rbac", "RBAC allowed it");
    assert_eq!((reply.status, layer.as_str(), reason.as_str()), (401, "oauth", "jwt_required"));

    // No rule for this path: default deny.
    let reply = http(out, "GET", "budget-backend", "/budget/other", &[]).await;
    assert_eq!((reply.status, reply.denied()), (403, ("rbac".into(), "no_matching_rule".into())));
    assert!(mesh.app.seen().is_empty(), "nothing reached the app: {:?}", mesh.app.paths());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_logs_and_forwards() {
    let (policy, env) = reference_policy();
    let mesh = Mesh::start_with_policy(&policy, env).await;
    let yaml = std::fs::read_to_string(&mesh.backend_config)
        .unwrap()
        .replace("policy: {file: policy.yaml}", "policy: {file: policy.yaml, mode: shadow}");
    std::fs::write(&mesh.backend_config, yaml).unwrap();
    // The mode is read at start: restart the backend on the edited config.
    let backend = proxy::app::App::start(
        proxy::config::Config::load_with_env(&mesh.backend_config, &reference_policy().1).unwrap(),
    )
    .await
    .unwrap();
    let mut identity = backend.identity.clone();
    identity.wait_ready().await.unwrap();
    let tls = mesh.client_tls(REPORT, &[b"http/1.1"]);
    let raw = b"POST /budget/submit HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let reply = super::support::raw_exchange(backend.inbound_addr.unwrap(), tls, raw, Duration::from_secs(5)).await;
    assert_eq!(super::support::statuses(&reply), [200], "{reply}");
    assert_eq!(mesh.app.paths(), ["/budget/submit"]);
    let metrics = get(backend.telemetry_addr, "/metrics").await.1;
    assert!(
        metrics.contains(
            r#"a2a_requests_total{decision="shadow_deny",direction="inbound",layer="rbac",reason="rule_denied"} 1"#
        ),
        "{metrics}"
    );
}

/// Shadow mode's boundary: the handshake check stays enforced; what layers
/// 3 and 4 deny (a missing token, a high risk) is forwarded and audited as
/// `shadow_deny` with the layer and reason that would have refused it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_forwards_layer_3_and_4_denials_but_not_a_refused_handshake() {
    use super::mesh::{ADMIN_KEY, AUDIENCE, MENUS, REPORT_OID, TENANT, VIEWER_KEY};
    let (policy, env) = reference_policy();
    let mesh = Mesh::start_with_policy(&policy, env.clone()).await;
    let yaml = std::fs::read_to_string(&mesh.backend_config)
        .unwrap()
        .replace("policy: {file: policy.yaml}", "policy: {file: policy.yaml, mode: shadow}")
        .replace("state_file: state.json", "state_file: shadow-state.json");
    let path = mesh.dir.path().join("shadow.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut backend = proxy::app::App::start(proxy::config::Config::load_with_env(&path, &env).unwrap()).await.unwrap();
    backend.identity.wait_ready().await.unwrap();
    let (inbound, mgmt) = (backend.inbound_addr.unwrap(), backend.mgmt_addr.unwrap());
    let read = |token: Option<String>| {
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let raw = format!("GET /budget/read HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
        super::support::raw_exchange(
            inbound,
            mesh.client_tls(REPORT, &[b"http/1.1"]),
            raw.into_bytes().leak(),
            Duration::from_secs(10),
        )
    };
    let last_event = || async {
        let (_, _, audit) = super::mgmt::call(mgmt, "GET", "/mgmt/audit?limit=1", Some(VIEWER_KEY), None, &[]).await;
        let e = &audit["entries"][0];
        (
            e["decision"].as_str().unwrap().to_owned(),
            e["layer"].as_str().unwrap().to_owned(),
            e["reason"].as_str().unwrap().to_owned(),
        )
    };

    // Layer 3: no token on a rule that requires one.
    assert_eq!(super::support::statuses(&read(None).await), [200]);
    assert_eq!(last_event().await, ("shadow_deny".into(), "oauth".into(), "jwt_required".into()));

    // Layer 4a: a valid token, but the caller pushed to high risk.
    let token = mesh
        .idp
        .token(&proxy::cmd::dev_idp::TokenSpec {
            tenant: TENANT.into(),
            audiences: vec![AUDIENCE.into()],
            client_id: REPORT_OID.into(),
            oid: REPORT_OID.into(),
            roles: vec!["Budget.Read".into()],
            ttl: Duration::from_secs(600),
            v1: false,
            cnf_x5t: None,
        })
        .unwrap();
    let high = format!(r#"{{"spiffe_id": "{REPORT}", "risk_level": "high"}}"#);
    assert_eq!(super::mgmt::call(mgmt, "PUT", "/mgmt/agent-risk", Some(ADMIN_KEY), Some(&high), &[]).await.0, 200);
    assert_eq!(super::support::statuses(&read(Some(token)).await), [200]);
    assert_eq!(last_event().await, ("shadow_deny".into(), "risk".into(), "high_risk_agent_blocked".into()));
    assert_eq!(mesh.app.paths(), ["/budget/read", "/budget/read"], "both forwarded");

    // Layer 1 stays enforced: a caller outside the allow-list never gets a request through.
    let mut refused = String::new();
    if let Ok(mut tls) = super::support::tls_connect(inbound, mesh.client_tls(MENUS, &[b"http/1.1"])).await {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = tls.write_all(b"GET /budget/read HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
        refused = String::from_utf8_lossy(&out).into_owned();
    }
    assert!(super::support::statuses(&refused).is_empty(), "{refused}");
    let counted = r#"a2a_tls_handshakes_total{direction="inbound",result="not_allowed"} 1"#;
    eventually(Duration::from_secs(10), counted, || async {
        get(backend.telemetry_addr, "/metrics").await.1.contains(counted).then_some(())
    })
    .await;
    assert_eq!(mesh.app.paths().len(), 2, "nothing more reached the app");
}

fn policy_allowing(extra: &str) -> String {
    OPEN_POLICY.replace(
        "rules: [{path: '/*', methods: ['*'], action: allow}]}\n  - {name: employee-menus",
        &format!("rules: [{{path: '/budget/read', methods: [GET], action: allow}}, {{path: '{extra}', methods: [GET], action: allow}}]}}\n  - {{name: employee-menus"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_swaps_under_traffic_fail_nothing_and_a_broken_file_changes_nothing() {
    let mesh = Mesh::start_with_policy(&policy_allowing("/a"), Default::default()).await;
    let out = mesh.report.outbound_addr.unwrap();
    let (ok, failed) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let stop = Arc::new(tokio::sync::Notify::new());
    let traffic = {
        let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.notified() => return,
                    reply = http(out, "GET", "budget-backend", "/budget/read", &[]) => {
                        let counter = if reply.status == 200 { &ok } else { &failed };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let store = mesh.backend.policy.clone().unwrap();
    let first = store.current().generation;
    let answered = || ok.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed);
    for i in 0..20 {
        let extra = if i % 2 == 0 { "/b" } else { "/a" };
        std::fs::write(&mesh.policy_file, policy_allowing(extra)).unwrap();
        let before = answered();
        mesh.backend.reload().await.unwrap();
        // At least one request answered under each new policy, however fast the machine.
        let flowed = || async { (answered() > before).then_some(()) };
        eventually(Duration::from_secs(10), "a request after the swap", flowed).await;
    }
    assert_eq!(store.current().generation, first + 20);
    // The last policy allows /a (i = 19), not /b.
    assert_eq!(http(out, "GET", "budget-backend", "/a", &[]).await.status, 200);
    assert_eq!(http(out, "GET", "budget-backend", "/b", &[]).await.status, 403);

    // A broken file is rejected; the running policy keeps serving.
    std::fs::write(
        &mesh.policy_file,
        "version: '1'\ntrust_domain: aim.microsoft.com\ndefault_action: perhaps\npolicies: []\n",
    )
    .unwrap();
    let err = mesh.backend.reload().await.unwrap_err().to_string();
    assert!(err.contains("default_action"), "{err}");
    assert_eq!(store.current().generation, first + 20);
    assert_eq!(http(out, "GET", "budget-backend", "/a", &[]).await.status, 200);

    stop.notify_one();
    traffic.await.unwrap();
    assert!(ok.load(Ordering::Relaxed) >= 20, "traffic flowed");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed during the swaps");
    let metrics = get(mesh.backend.telemetry_addr, "/metrics").await.1;
    let errors = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"a2a_policy_reloads_total{result="error"} "#))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(errors.is_some_and(|n| n >= 1.0), "the refused reload is counted: {metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_policy_file_is_picked_up_by_the_watcher() {
    let mesh = Mesh::start_with_policy(&policy_allowing("/a"), Default::default()).await;
    let out = mesh.report.outbound_addr.unwrap();
    assert_eq!(http(out, "GET", "budget-backend", "/c", &[]).await.status, 403);
    std::fs::write(&mesh.policy_file, policy_allowing("/c")).unwrap();
    eventually(Duration::from_secs(15), "the watcher reloads the policy", || async {
        (http(out, "GET", "budget-backend", "/c", &[]).await.status == 200).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_event_names_the_path_that_was_judged() {
    let mesh = Mesh::start_with_policy(&policy_allowing("/a"), Default::default()).await;
    let out = mesh.report.outbound_addr.unwrap();
    for (path, status) in [("/x/../budget/read", 200), ("/x/../admin", 403), ("/a%2Fb", 400)] {
        assert_eq!(http(out, "GET", "budget-backend", path, &[]).await.status, status, "{path}");
    }
    let events = mesh.backend.audit.recent(3, Some(REPORT), None);
    let paths: Vec<(&str, &str)> =
        events.iter().rev().map(|e| (e.path.as_deref().unwrap(), e.reason.as_str())).collect();
    // Canonical once it could be judged, allowed or denied; as received when it could not.
    assert_eq!(paths, [("/budget/read", "allowed"), ("/admin", "no_matching_rule"), ("/a%2Fb", "bad_path")]);
}
