//! The sidecar's own Entra identity: tokens obtained by federation (a
//! re-read token file, or a JWT-SVID) attached to outbound calls and
//! accepted by the target; Graph-sourced risk and tags with their failure
//! modes.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use certs::dev::JwtKey;
use proxy::app::App;
use proxy::cmd::dev_idp::{AppRegistration, GraphMode, TokenSpec};
use proxy::config::Config;
use serde_json::json;

use super::mesh::{AUDIENCE, Mesh, REPORT, REPORT_OID, TENANT, reference_policy};
use super::support::{eventually, http, read_reply, tls_connect};

/// A Kubernetes-style issuer whose service-account tokens the IdP trusts.
fn k8s_issuer(mesh: &Mesh) -> JwtKey {
    let key = JwtKey::generate().unwrap();
    mesh.idp.trust_assertion_keys(json!({"keys": [key.jwk().unwrap()]}).to_string().as_bytes()).unwrap();
    key
}

fn service_account_token(key: &JwtKey) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    key.sign(&json!({"iss": "https://k8s.example", "sub": "system:serviceaccount:agents:report", "aud": ["api://AzureADTokenExchange"], "exp": now + 600, "iat": now}))
        .unwrap()
}

fn register(mesh: &Mesh, client: &str, oid: &str, roles: &[&str]) {
    mesh.idp.register_app(
        client,
        AppRegistration { oid: oid.into(), roles: roles.iter().map(|r| (*r).to_owned()).collect() },
    );
}

async fn start(path: &Path, yaml: &str, env: &proxy::config::MapEnv) -> App {
    std::fs::write(path, yaml).unwrap();
    let mut app = App::start(Config::load_with_env(path, env).unwrap()).await.unwrap();
    app.identity.wait_ready().await.unwrap();
    app
}

/// An outbound sidecar for budget-report whose route attaches an Entra token.
fn report_outbound_yaml(mesh: &Mesh, assertion: &str) -> String {
    format!(
        "identity: {{socket: 'unix://{dir}/report.sock'}}
telemetry: {{listen: '127.0.0.1:0'}}
outbound:
  listen: '127.0.0.1:0'
  routes:
    - {{name: budget-backend, upstream: 'https://{inbound}', server_id: '{backend}', entra_token: {{scope: '{AUDIENCE}/.default'}}}}
entra: {{client_id: report-client, tenant_id: '{TENANT}', authority: '{idp}', {assertion}}}
",
        dir = mesh.dir.path().display(),
        inbound = mesh.inbound(),
        backend = super::mesh::BACKEND,
        idp = mesh.idp.authority(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_token_from_a_rotating_federated_token_file() {
    let (policy, env) = reference_policy();
    let mesh = Mesh::start_with_policy(&policy, env).await;
    register(&mesh, "report-client", REPORT_OID, &["Budget.Read"]);
    let issuer = k8s_issuer(&mesh);
    let token_file = mesh.dir.path().join("azure-identity-token");
    std::fs::write(&token_file, "not-a-token-yet").unwrap();
    let yaml = report_outbound_yaml(&mesh, &format!("federated_token_file: '{}'", token_file.display()));
    let outbound = start(&mesh.dir.path().join("report-entra.yaml"), &yaml, &Default::default()).await;
    let out = outbound.outbound_addr.unwrap();

    // The projected token is not valid yet: the sidecar's own failure, 503.
    let reply = http(out, "GET", "budget-backend", "/budget/read", &[]).await;
    assert_eq!((reply.status, reply.denied()), (503, ("identity".into(), "token_unavailable".into())));

    // Kubernetes rotates the file: the next exchange reads the new one.
    std::fs::write(&token_file, service_account_token(&issuer)).unwrap();
    let reply = http(out, "GET", "budget-backend", "/budget/read", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let seen = mesh.app.seen().pop().unwrap();
    assert!(seen.header("authorization").is_some_and(|a| a.starts_with("Bearer ")));
    // The token is cached: a second call needs no exchange, and the app's own Authorization wins.
    assert_eq!(http(out, "GET", "budget-backend", "/budget/read", &[]).await.status, 200);
    let reply = http(out, "GET", "budget-backend", "/budget/read", &[("authorization", "Bearer app-chosen")]).await;
    assert_eq!(reply.denied().1, "jwt_invalid", "the app's header was kept, not replaced");

    // No secret anywhere in the configuration.
    assert!(!yaml.contains("secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_token_from_a_jwt_svid() {
    let (policy, env) = reference_policy();
    let mesh = Mesh::start_with_policy(&policy, env).await;
    register(&mesh, "report-client", REPORT_OID, &["Budget.Read"]);
    // The IdP trusts the SPIFFE trust domain's JWT bundle (a federated credential on the app).
    mesh.idp.trust_assertion_keys(serde_json::to_string(&mesh.ca.jwt_bundle().unwrap()).unwrap().as_bytes()).unwrap();
    let yaml = report_outbound_yaml(&mesh, "use_jwt_svid: true");
    let outbound = start(&mesh.dir.path().join("report-svid.yaml"), &yaml, &Default::default()).await;
    let reply = http(outbound.outbound_addr.unwrap(), "GET", "budget-backend", "/budget/read", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

/// A backend like the mesh's, with Graph as the risk and tag source, its
/// facts refreshed (and cached) for `ttl`.
fn graph_backend_yaml(mesh: &Mesh, token_file: &Path, on_unavailable: &str, ttl: &str) -> String {
    let base = std::fs::read_to_string(&mesh.backend_config)
        .unwrap()
        .replace("state_file: state.json", "state_file: graph-state.json");
    format!(
        "{base}entra: {{client_id: backend-client, tenant_id: '{TENANT}', authority: '{idp}', graph_endpoint: '{idp}', federated_token_file: '{file}'}}
risk: {{source: graph, refresh: {ttl}, on_unavailable: {on_unavailable}}}
tags: {{source: graph, ttl: {ttl}, on_unavailable: {on_unavailable}}}
",
        idp = mesh.idp.authority(),
        file = token_file.display()
    )
}

async fn read_as_report(mesh: &Mesh, backend: &App, token: &str) -> (u16, String) {
    let tls = mesh.client_tls(REPORT, &[b"http/1.1"]);
    let io = hyper_util::rt::TokioIo::new(tls_connect(backend.inbound_addr.unwrap(), tls).await.unwrap());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("/budget/read")
        .header("host", "x")
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let reply = read_reply(sender.send_request(req).await.unwrap()).await;
    let reason = if reply.status == 200 { "allowed".to_owned() } else { reply.denied().1 };
    (reply.status, reason)
}

/// The reference mesh plus a backend whose Layer 4 facts come from the dev
/// IdP's Graph emulator (budget-report: not at risk, tagged finance), and a
/// valid token of budget-report.
struct GraphRig {
    mesh: Mesh,
    backend: App,
    token: String,
}

impl GraphRig {
    async fn start(on_unavailable: &str, ttl: &str) -> Self {
        let (policy, env) = reference_policy();
        let mesh = Mesh::start_with_policy(&policy, env.clone()).await;
        register(&mesh, "backend-client", "backend-oid", &[]);
        let issuer = k8s_issuer(&mesh);
        let token_file = mesh.dir.path().join("backend-token");
        std::fs::write(&token_file, service_account_token(&issuer)).unwrap();
        mesh.idp.set_graph_attribute(REPORT_OID, "AgentIdentity", "Department", "finance");
        let yaml = graph_backend_yaml(&mesh, &token_file, on_unavailable, ttl);
        let backend = start(&mesh.dir.path().join("graph.yaml"), &yaml, &env).await;
        let token = mesh
            .idp
            .token(&TokenSpec {
                tenant: TENANT.into(),
                audiences: vec![AUDIENCE.into()],
                client_id: "report-client".into(),
                oid: REPORT_OID.into(),
                roles: vec!["Budget.Read".into()],
                ttl: Duration::from_secs(600),
                v1: false,
                cnf_x5t: None,
            })
            .unwrap();
        Self { mesh, backend, token }
    }

    async fn read(&self) -> (u16, String) {
        read_as_report(&self.mesh, &self.backend, &self.token).await
    }

    /// Reads until the answer's reason is `want` (facts change in the background).
    async fn until(&self, want: &'static str) {
        eventually(Duration::from_secs(15), want, || async { (self.read().await.1 == want).then_some(()) }).await;
    }

    /// A push through the real admin API.
    async fn push(&self, route: &str, body: serde_json::Value) {
        let mgmt = self.backend.mgmt_addr.unwrap();
        let key = Some(super::mesh::ADMIN_KEY);
        let (status, _, answer) = super::mgmt::call(mgmt, "PUT", route, key, Some(&body.to_string()), &[]).await;
        assert_eq!(status, 200, "{route}: {answer}");
    }
}

/// Not in riskyServicePrincipals (404) and tagged finance: allowed; Graph
/// going down changes nothing while the cached facts are within their TTL
/// (an hour here, so the machine's speed does not matter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_facts_allow_and_cached_facts_outlive_an_outage() {
    let rig = GraphRig::start("deny", "1h").await;
    assert_eq!(rig.read().await, (200, "allowed".into()));
    let asked = rig.mesh.idp.graph_requests();
    rig.mesh.idp.set_graph_mode(GraphMode::Down);
    for _ in 0..3 {
        assert_eq!(rig.read().await, (200, "allowed".into()));
    }
    assert_eq!(rig.mesh.idp.graph_requests(), asked, "served from the cache, Graph not asked");
}

/// Past the TTL an outage makes the risk unknown: `on_unavailable: deny`
/// applies, and `/mgmt/health` and `ca-policy-effective` show how fresh the
/// facts are and the last error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_past_the_ttl_denies_and_the_admin_api_shows_it() {
    let rig = GraphRig::start("deny", "1s").await;
    assert_eq!(rig.read().await, (200, "allowed".into()));
    rig.mesh.idp.set_graph_mode(GraphMode::Down);
    rig.until("risk_unavailable").await;
    let mgmt = rig.backend.mgmt_addr.unwrap();
    let (_, _, health) = super::mgmt::call(mgmt, "GET", "/mgmt/health", None, None, &[]).await;
    assert_eq!(health["risk"]["source"], "graph");
    assert!(health["risk"]["last_success"].is_string() && health["risk"]["last_error"].is_string(), "{health}");
    let viewer = Some(super::mesh::VIEWER_KEY);
    let (_, _, effective) = super::mgmt::call(mgmt, "GET", "/mgmt/ca-policy-effective", viewer, None, &[]).await;
    let risk = &effective["risk"];
    assert_eq!(risk["source"], "graph", "{effective}");
    assert!(risk["last_error"].is_string() && risk["age_seconds"].is_u64(), "age and last error: {effective}");
}

/// Throttled (429) and slow Graph answers count as unavailable too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_and_slow_graph_count_as_unavailable() {
    let rig = GraphRig::start("deny", "1s").await;
    for mode in [GraphMode::Throttled, GraphMode::Slow] {
        rig.mesh.idp.set_graph_mode(GraphMode::Ok);
        rig.until("allowed").await;
        rig.mesh.idp.set_graph_mode(mode);
        rig.until("risk_unavailable").await;
    }
}

/// An operator's push through `PUT /mgmt/agent-risk` and `agent-tags` wins
/// over Graph: during an outage, and over Graph's all-clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_through_the_admin_api_win_over_graph() {
    let rig = GraphRig::start("deny", "1s").await;
    rig.mesh.idp.set_graph_mode(GraphMode::Down);
    rig.until("risk_unavailable").await;
    // Risk known by the push; the tag still unavailable.
    rig.push("/mgmt/agent-risk", json!({"spiffe_id": REPORT, "risk_level": "low"})).await;
    assert_eq!(rig.read().await, (403, "tags_unavailable".into()));
    rig.push("/mgmt/agent-tags", json!({"spiffe_id": REPORT, "tag": "finance"})).await;
    assert_eq!(rig.read().await, (200, "allowed".into()));
    // Removing the pushes brings the outage back.
    rig.push("/mgmt/agent-risk", json!({"spiffe_id": REPORT, "risk_level": null})).await;
    rig.push("/mgmt/agent-tags", json!({"spiffe_id": REPORT, "tag": null})).await;
    assert_eq!(rig.read().await, (403, "risk_unavailable".into()));

    // Graph answers "not at risk"; a pushed quarantine still blocks.
    rig.mesh.idp.set_graph_mode(GraphMode::Ok);
    rig.until("allowed").await;
    rig.push("/mgmt/agent-risk", json!({"spiffe_id": REPORT, "risk_level": "high"})).await;
    assert_eq!(rig.read().await, (403, "high_risk_agent_blocked".into()));
    // A pushed tag other than the target's is refused by 4b.
    rig.push("/mgmt/agent-risk", json!({"spiffe_id": REPORT, "risk_level": null})).await;
    rig.push("/mgmt/agent-tags", json!({"spiffe_id": REPORT, "tag": "marketing"})).await;
    assert_eq!(rig.read().await, (403, "agent_tag_mismatch".into()));
}

/// Graph's risk as reported: a high risk blocks, a dismissed one does not;
/// set over the dev IdP's admin API, as a person driving `dev idp` would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_reported_risk_blocks_until_dismissed() {
    let rig = GraphRig::start("deny", "1s").await;
    let admin = rig.mesh.idp.authority().trim_start_matches("http://").parse().unwrap();
    let risk_path = format!("/admin/graph/risk/{REPORT_OID}");
    assert_eq!(put_json(admin, &risk_path, r#"{"riskLevel":"high","riskState":"atRisk"}"#).await, 200);
    rig.until("high_risk_agent_blocked").await;
    assert_eq!(put_json(admin, &risk_path, r#"{"riskLevel":"high","riskState":"dismissed"}"#).await, 200);
    rig.until("allowed").await;
    assert_eq!(put_json(admin, &risk_path, r#"{"riskLevel":"high"}"#).await, 400);
}

/// With `on_unavailable: allow`, an outage lets requests through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_unavailable_allow_lets_an_outage_through() {
    let rig = GraphRig::start("allow", "1s").await;
    rig.mesh.idp.set_graph_mode(GraphMode::Down);
    // Past the TTL (the risk unknown shows in the audit as `unknown`), still allowed.
    let unknown = || async {
        assert_eq!(rig.read().await, (200, "allowed".into()));
        let (_, _, audit) = super::mgmt::call(
            rig.backend.mgmt_addr.unwrap(),
            "GET",
            "/mgmt/audit?limit=1",
            Some(super::mesh::VIEWER_KEY),
            None,
            &[],
        )
        .await;
        (audit["entries"][0]["risk_level"] == "unknown").then_some(())
    };
    eventually(Duration::from_secs(15), "a request allowed with the risk unknown", unknown).await;
}

async fn put_json(addr: std::net::SocketAddr, path: &str, body: &'static str) -> u16 {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::put(path)
        .header("host", "idp")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(body.as_bytes())))
        .unwrap();
    sender.send_request(req).await.unwrap().status().as_u16()
}
