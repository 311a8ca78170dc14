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

/// The config file is watched like the policy files, through a ConfigMap
/// volume's symlinks (`config.yaml -> ..data/config.yaml`, `..data ->
/// ..<timestamp>`), which the kubelet updates by swapping `..data`: a new
/// allow-list applies without a signal; a bad edit and a restart-only edit
/// are logged, counted and ignored, the running configuration kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_swap_reloads_the_config_and_a_bad_one_is_ignored() {
    use super::mesh::APPROVAL;
    let mesh = Mesh::start().await;
    let dir = mesh.dir.path();
    let volume = dir.join("configmap");
    std::fs::create_dir_all(&volume).unwrap();
    let yaml = |callers: &str| {
        mesh.sidecar_yaml("watched", mesh.app.addr)
            .replace(
                "policy: {file: policy.yaml}",
                &format!("policy: {{file: '{}'}}", dir.join("policy.yaml").display()),
            )
            .replace(
                "state_file: watched-state.json",
                &format!("state_file: '{}'", dir.join("watched-state.json").display()),
            )
            .replace(&format!("allowed_callers: ['{REPORT}', '{APPROVAL}']"), &format!("allowed_callers: [{callers}]"))
    };
    // What the kubelet does: a new timestamped directory, then `..data` swapped by rename.
    let publish = |generation: u32, contents: &str| {
        let data = volume.join(format!("..2026_12_02_00_00_0{generation}"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("config.yaml"), contents).unwrap();
        let staged = volume.join("..data_tmp");
        let _ = std::fs::remove_file(&staged);
        std::os::unix::fs::symlink(data.file_name().unwrap(), &staged).unwrap();
        std::fs::rename(&staged, volume.join("..data")).unwrap();
    };
    let both = format!("'{REPORT}', '{APPROVAL}'");
    assert!(yaml(&both).contains(&both), "the test edits the allow-list line");
    publish(1, &yaml(&both));
    std::os::unix::fs::symlink("..data/config.yaml", volume.join("config.yaml")).unwrap();
    let path = volume.join("config.yaml");
    let mut sidecar = proxy::app::App::start(proxy::config::Config::load(&path).unwrap()).await.unwrap();
    sidecar.identity.wait_ready().await.unwrap();
    let callers = |s: &proxy::app::App| {
        let applied = s.reloader().applied();
        applied.inbound.as_ref().unwrap().allowed_callers.iter().map(ToString::to_string).collect::<Vec<_>>()
    };
    assert_eq!(callers(&sidecar), [REPORT, APPROVAL]);
    assert_eq!(status_of(&mesh, &sidecar, "/x").await.0, 200);

    // Swapped to an allow-list without budget-report: applied, no signal sent.
    publish(2, &yaml(&format!("'{APPROVAL}'")));
    let applied = || async { (callers(&sidecar) == [APPROVAL]).then_some(()) };
    super::support::eventually(Duration::from_secs(10), "the swapped config applied", applied).await;
    let metric = |result: &str| format!("a2a_config_reloads_total{{result=\"{result}\"}}");
    let count = |text: &str, result: &str| {
        text.lines().find_map(|l| l.strip_prefix(&metric(result))?.trim().parse::<f64>().ok()).unwrap_or(-1.0)
    };
    let metrics = get(sidecar.telemetry_addr, "/metrics").await.1;
    assert_eq!((count(&metrics, "ok"), count(&metrics, "error")), (1.0, 0.0), "{metrics}");

    // A broken edit, then one that needs a restart: each counted once, neither applied.
    publish(3, "identity: [\n");
    let errors = |n: f64| {
        let telemetry = sidecar.telemetry_addr;
        move || async move { (count(&get(telemetry, "/metrics").await.1, "error") == n).then_some(()) }
    };
    super::support::eventually(Duration::from_secs(10), "the broken edit counted", errors(1.0)).await;
    publish(4, &yaml(&both).replace("header_timeout: 1s", "header_timeout: 2s"));
    super::support::eventually(Duration::from_secs(10), "the restart-only edit counted", errors(2.0)).await;
    assert_eq!(callers(&sidecar), [APPROVAL], "the running configuration stays");
    // Seen once each: not retried every second.
    let metrics = get(sidecar.telemetry_addr, "/metrics").await.1;
    assert_eq!(count(&metrics, "error"), 2.0);
    sidecar.shutdown().await;
}
