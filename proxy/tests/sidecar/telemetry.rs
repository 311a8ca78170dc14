//! `/readyz` follows the SVID: 503 before the first one, 200 after (egress
//! answers 503 `not_ready` until then); the probe subcommand and
//! `/mgmt/health` agree; `/metrics` shows the SVID expiry.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use certs::TrustDomain;
use certs::dev::{DevCa, WorkloadApiServer, WorkloadApiServerConfig};
use proxy::app::App;
use proxy::config::{Config, MapEnv};

use super::support::{bin, eventually, get, http};

/// No inbound and no policy (an egress-only sidecar, its one route to a closed
/// port), with an admin listener.
fn config(socket: &Path) -> Config {
    let state = socket.with_file_name("state.json");
    let yaml = format!(
        "identity: {{socket: 'unix://{}'}}\ntelemetry: {{listen: 127.0.0.1:0}}
outbound: {{listen: 127.0.0.1:0, routes: [{{name: budget-backend, upstream: 'https://127.0.0.1:1', server_id: 'spiffe://aim.example/budget-backend'}}]}}
mgmt: {{listen: '127.0.0.1:0', state_file: '{}', keys: [{{name: ops, role: admin, sha256: '{}'}}]}}\n",
        socket.display(),
        state.display(),
        "0".repeat(64)
    );
    Config::parse(Path::new("test.yaml"), &yaml, &MapEnv::default()).unwrap()
}

/// A Workload API server on `socket` issuing the budget-backend SVID of a fresh CA.
async fn agent(socket: &Path) -> WorkloadApiServer {
    let ca = Arc::new(DevCa::generate(&TrustDomain::new("aim.example").unwrap()).unwrap());
    let config = WorkloadApiServerConfig {
        ca,
        id: "spiffe://aim.example/budget-backend".parse().unwrap(),
        ttl: Duration::from_secs(60),
        federated: vec![],
    };
    WorkloadApiServer::start(socket, config).await.unwrap()
}

fn probe(addr: std::net::SocketAddr) -> Option<i32> {
    bin().args(["probe", "--addr", &addr.to_string()]).output().unwrap().status.code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_until_the_first_svid_then_200() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let app = App::start(config(&socket)).await.unwrap();
    let addr = app.telemetry_addr;

    assert_eq!(get(addr, "/healthz").await.0, 200);
    // 503, saying why once the source has tried the socket.
    let why = || async {
        let (status, body) = get(addr, "/readyz").await;
        assert_eq!(status, 503, "{body}");
        body.starts_with("not ready: no svid yet (workload api: cannot connect").then_some(())
    };
    eventually(Duration::from_secs(10), "readyz names the cause", why).await;
    assert_eq!(tokio::task::spawn_blocking(move || probe(addr)).await.unwrap(), Some(1));
    let mgmt = app.mgmt_addr.unwrap();
    let (_, _, health) = super::mgmt::call(mgmt, "GET", "/mgmt/health", None, None, &[]).await;
    assert_eq!((health["status"].as_str(), health["reason"].as_str()), (Some("unhealthy"), Some("no svid yet")));
    // Egress without an SVID is the sidecar's own failure, never blamed on the target.
    let outbound = app.outbound_addr.unwrap();
    let reply = http(outbound, "GET", "budget-backend", "/x", &[]).await;
    assert_eq!((reply.status, reply.denied()), (503, ("identity".into(), "not_ready".into())));

    // The agent comes up after the sidecar: the source keeps retrying.
    let agent = agent(&socket).await;
    eventually(Duration::from_secs(20), "readyz 200", || async { (get(addr, "/readyz").await.0 == 200).then_some(()) })
        .await;
    assert_eq!(tokio::task::spawn_blocking(move || probe(addr)).await.unwrap(), Some(0));
    // Healthy without a policy: this sidecar has no inbound, so it needs none.
    let (_, _, health) = super::mgmt::call(mgmt, "GET", "/mgmt/health", None, None, &[]).await;
    assert_eq!((health["status"].as_str(), &health["reason"]), (Some("healthy"), &serde_json::Value::Null), "{health}");
    let reply = http(outbound, "GET", "budget-backend", "/x", &[]).await;
    assert_eq!((reply.status, reply.denied()), (502, ("upstream".into(), "upstream_unavailable".into())));

    let (status, metrics) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let expiry = metrics
        .lines()
        .find_map(|l| l.strip_prefix("a2a_svid_expiry_timestamp_seconds "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no expiry metric in:\n{metrics}"));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(expiry > now && expiry < now + 120.0, "expiry {expiry} vs now {now}");
    let issued = metrics
        .lines()
        .find_map(|l| l.strip_prefix("a2a_svid_issued_timestamp_seconds "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no issued metric in:\n{metrics}"));
    assert!(issued <= now && expiry - issued > 0.0, "issued {issued}, expiry {expiry}, now {now}: the lifetime");
    assert!(metrics.contains("a2a_svid_rotations_total 0"), "{metrics}");
    assert_eq!(get(addr, "/nope").await.0, 404);

    // A rotation is counted, and the expiry follows the new SVID.
    agent.rotate_now();
    let rotated = || async {
        let metrics = get(addr, "/metrics").await.1;
        metrics.contains("a2a_svid_rotations_total 1").then_some(metrics)
    };
    let metrics = eventually(Duration::from_secs(10), "a2a_svid_rotations_total 1", rotated).await;
    let serial = app.identity.current().unwrap().svid().serial().to_owned();
    assert_eq!(agent.current_serial().as_deref(), Some(serial.as_str()), "the sidecar serves the rotated SVID");
    let expiry_after = metrics
        .lines()
        .find_map(|l| l.strip_prefix("a2a_svid_expiry_timestamp_seconds "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap();
    assert!(expiry_after >= expiry, "{expiry_after} < {expiry}");

    app.shutdown().await;
}

/// A federated bundle the agent sends broken is left out and reported (in
/// `/mgmt/health` and `a2a_federated_bundles_rejected`); the SVID keeps
/// rotating and the sidecar stays ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_federated_bundle_is_reported_and_rotation_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let agent = agent(&socket).await;
    let mut app = App::start(config(&socket)).await.unwrap();
    let first = app.identity.wait_ready().await.unwrap();

    agent.set_federated_raw("spiffe://partner.example", Some(b"\x30\x03garbage".to_vec()));
    agent.rotate_now();
    let w = app.identity.clone();
    let serial = first.svid().serial().to_owned();
    eventually(Duration::from_secs(10), "rotated", || {
        let w = w.clone();
        let serial = serial.clone();
        async move { w.current().filter(|i| i.svid().serial() != serial).map(|_| ()) }
    })
    .await;
    let (_, _, health) = super::mgmt::call(app.mgmt_addr.unwrap(), "GET", "/mgmt/health", None, None, &[]).await;
    assert_eq!(health["status"], "healthy", "{health}");
    let rejected = health["rejected_bundles"].as_array().unwrap();
    assert_eq!(rejected.len(), 1, "{health}");
    assert_eq!(rejected[0]["trust_domain"], "spiffe://partner.example");
    let telemetry = app.telemetry_addr;
    let metric =
        || async { get(telemetry, "/metrics").await.1.contains("a2a_federated_bundles_rejected 1").then_some(()) };
    eventually(Duration::from_secs(10), "rejected bundles metric", metric).await;
    assert_eq!(get(telemetry, "/readyz").await.0, 200);
    app.shutdown().await;
}

/// An SVID that expires (its source has nothing newer): `/readyz` goes 503,
/// `probe` exits 1 and `/mgmt/health` says unhealthy, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_once_the_svid_has_expired() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::generate(&TrustDomain::new("aim.example").unwrap()).unwrap();
    let svid = ca.issue(&"spiffe://aim.example/budget-backend".parse().unwrap(), Duration::from_secs(3)).unwrap();
    certs::dev::write_svid_files(&dir.path().join("svid"), &svid, ca.bundle_pem()).unwrap();
    let yaml = format!(
        "identity: {{source: files, files: {{cert: svid/svid.pem, key: svid/svid_key.pem, bundle: svid/svid_bundle.pem}}}}
telemetry: {{listen: 127.0.0.1:0}}
mgmt: {{listen: '127.0.0.1:0', state_file: state.json, keys: [{{name: ops, role: admin, sha256: '{}'}}]}}\n",
        "0".repeat(64)
    );
    let path = dir.path().join("sidecar.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut app = App::start(Config::load(&path).unwrap()).await.unwrap();
    app.identity.wait_ready().await.unwrap();
    let addr = app.telemetry_addr;
    assert_eq!(get(addr, "/readyz").await.0, 200);
    let expired = || async {
        let (status, body) = get(addr, "/readyz").await;
        (status == 503).then_some(body)
    };
    let body = eventually(Duration::from_secs(20), "readyz 503 after expiry", expired).await;
    assert_eq!(body, "not ready: svid expired\n");
    assert_eq!(tokio::task::spawn_blocking(move || probe(addr)).await.unwrap(), Some(1));
    let (_, _, health) = super::mgmt::call(app.mgmt_addr.unwrap(), "GET", "/mgmt/health", None, None, &[]).await;
    assert_eq!((health["status"].as_str(), health["reason"].as_str()), (Some("unhealthy"), Some("svid expired")));
    assert_eq!(get(addr, "/healthz").await.0, 200, "alive, only not ready");
    app.shutdown().await;
}
