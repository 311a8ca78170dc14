//! A small mesh on loopback: one CA, a Workload API server per workload,
//! the test app behind an inbound sidecar (`budget-backend`), and outbound
//! sidecars for `budget-report` (allowed) and `employee-menus` (not allowed).
//! Every sidecar is built from YAML, like a real deployment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use certs::dev::{DevCa, WorkloadApiServer, WorkloadApiServerConfig};
use certs::{IdentityWatch, TrustDomain};
use proxy::app::App;
use proxy::config::Config;

use super::app::TestApp;

pub const TRUST_DOMAIN: &str = "aim.microsoft.com";
pub const BACKEND: &str = "spiffe://aim.microsoft.com/ests/bp/b1/aid/budget-backend";
pub const REPORT: &str = "spiffe://aim.microsoft.com/ests/bp/b1/aid/budget-report";
pub const MENUS: &str = "spiffe://aim.microsoft.com/ests/bp/b1/aid/employee-menus";
pub const APPROVAL: &str = "spiffe://aim.microsoft.com/ests/bp/b1/aid/budget-approval";
pub const TENANT: &str = "aaaaaaaa-0000-4000-8000-000000000001";
pub const AUDIENCE: &str = "api://budget-backend";
/// Service principal object IDs (`oid`) of the callers' Entra agent identities.
pub const REPORT_OID: &str = "00000000-0000-4000-8000-0000000000a1";
pub const APPROVAL_OID: &str = "00000000-0000-4000-8000-0000000000a2";

/// The backend's policy in most tests: both callers may do anything, so the
/// tests see Layer 1 and the HTTP handling alone.
pub const OPEN_POLICY: &str = "version: '1'
trust_domain: aim.microsoft.com
default_action: deny
policies:
  - {name: budget-report, spiffe_id: 'spiffe://aim.microsoft.com/ests/bp/b1/aid/budget-report', rules: [{path: '/*', methods: ['*'], action: allow}]}
  - {name: employee-menus, spiffe_id: 'spiffe://aim.microsoft.com/ests/bp/b1/aid/employee-menus', rules: [{path: '/*', methods: ['*'], action: allow}]}
";

/// The reference sample, and the environment its deployment sets.
pub fn reference_policy() -> (String, proxy::config::MapEnv) {
    let yaml = include_str!("../../../examples/reference-policy/spiffe-rbac-policy.yaml").to_owned();
    let mut env = proxy::config::MapEnv::default();
    for name in ["budget-report", "employee-menus", "budget-approval", "admin-control-plane"] {
        let key = name.to_ascii_uppercase().replace('-', "_");
        env = env.with(&format!("SPIFFE_PREFIX_{key}"), &format!("spiffe://aim.microsoft.com/ests/bp/b1/aid/{name}"));
    }
    env = env
        .with("ENTRA_ID_BUDGET_REPORT", REPORT_OID)
        .with("ENTRA_ID_BUDGET_APPROVAL", APPROVAL_OID)
        .with("SPIFFE_ID_GOOGLE_BUDGET_READER", "spiffe://gcp.aim.microsoft.com/ests/bp/g1/aid/google")
        .with("ENTRA_ID_GOOGLE_BUDGET_READER", "11111111-0000-0000-0000-000000000001")
        .with("SPIFFE_ID_GITHUB_BUDGET_READER", "spiffe://aim.microsoft.com/ests/bp/gh/aid/github")
        .with("ENTRA_ID_GITHUB_BUDGET_READER", "11111111-0000-0000-0000-000000000002");
    (yaml, env)
}

pub struct Mesh {
    pub dir: tempfile::TempDir,
    pub ca: Arc<DevCa>,
    pub app: Arc<TestApp>,
    pub backend: App,
    pub backend_config: PathBuf,
    pub policy_file: PathBuf,
    pub report: App,
    pub menus: App,
    pub approval: App,
    pub idp: Arc<proxy::cmd::dev_idp::DevIdp>,
    _idp_task: tokio::task::JoinHandle<()>,
    /// The Workload API servers of backend, report, menus, approval (in that order).
    pub agents: Vec<WorkloadApiServer>,
    _reserved: tokio::net::TcpSocket,
}

impl Mesh {
    pub async fn start() -> Self {
        Self::start_with_policy(OPEN_POLICY, proxy::config::MapEnv::default()).await
    }

    /// A mesh whose backend enforces `policy` (reference YAML), enriched from `env`.
    pub async fn start_with_policy(policy: &str, env: proxy::config::MapEnv) -> Self {
        Self::start_full(policy, env, false).await
    }

    /// As [`Self::start_with_policy`]; `jwks_down` starts the IdP's JWKS endpoint down.
    pub async fn start_full(policy: &str, env: proxy::config::MapEnv, jwks_down: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (idp, _, idp_task) = proxy::cmd::dev_idp::start(&dir.path().join("idp")).await.unwrap();
        idp.set_jwks_down(jwks_down);
        let ca = Arc::new(DevCa::generate(&TrustDomain::new(TRUST_DOMAIN).unwrap()).unwrap());
        let mut agents = Vec::new();
        for (name, id) in [("backend", BACKEND), ("report", REPORT), ("menus", MENUS), ("approval", APPROVAL)] {
            let config = WorkloadApiServerConfig {
                ca: ca.clone(),
                id: id.parse().unwrap(),
                ttl: Duration::from_secs(600),
                federated: vec![],
            };
            agents.push(WorkloadApiServer::start(&dir.path().join(format!("{name}.sock")), config).await.unwrap());
        }
        let app = TestApp::start().await;

        let policy_file = dir.path().join("policy.yaml");
        std::fs::write(&policy_file, policy).unwrap();
        let backend_config = dir.path().join("backend.yaml");
        let jwt = jwt_yaml(&idp.authority());
        std::fs::write(dir.path().join("jwt.yaml"), &jwt).unwrap();
        let backend_yaml = backend_yaml(&dir.path().join("backend.sock"), app.addr, &[REPORT, APPROVAL]) + &jwt;
        std::fs::write(&backend_config, backend_yaml).unwrap();
        let backend = start_app(Config::load_with_env(&backend_config, &env).unwrap()).await;
        let inbound = backend.inbound_addr.unwrap();

        // The `down` route's port: held by a socket that never listens, so it is
        // refused and never handed to another listener meanwhile.
        let reserved = tokio::net::TcpSocket::new_v4().unwrap();
        reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let closed_port = reserved.local_addr().unwrap().port();
        let caller = |name: &str| {
            let path = dir.path().join(format!("{name}.yaml"));
            std::fs::write(&path, caller_yaml(&dir.path().join(format!("{name}.sock")), inbound, closed_port)).unwrap();
            Config::load(&path).unwrap()
        };
        let report = start_app(caller("report")).await;
        let menus = start_app(caller("menus")).await;
        let approval = start_app(caller("approval")).await;
        Self {
            dir,
            ca,
            app,
            backend,
            backend_config,
            policy_file,
            report,
            menus,
            approval,
            idp,
            _idp_task: idp_task,
            agents,
            _reserved: reserved,
        }
    }

    /// Rewrites the backend's `allowed_callers` and reloads it (what SIGHUP does).
    pub async fn set_allowed(&self, callers: &[&str]) {
        let socket = self.dir.path().join("backend.sock");
        let jwt = std::fs::read_to_string(self.dir.path().join("jwt.yaml")).unwrap();
        std::fs::write(&self.backend_config, backend_yaml(&socket, self.app.addr, callers) + &jwt).unwrap();
        self.backend.reload().await.unwrap();
    }

    pub fn inbound(&self) -> SocketAddr {
        self.backend.inbound_addr.unwrap()
    }

    /// A TLS client config presenting an SVID for `id` and expecting the backend.
    pub fn client_tls(&self, id: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut config = certs::tls::client_config(self.identity(id), BACKEND.parse().unwrap()).unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    pub fn identity(&self, id: &str) -> IdentityWatch {
        IdentityWatch::fixed(Arc::new(self.ca.identity(&id.parse().unwrap(), Duration::from_secs(600), &[]).unwrap()))
    }
}

async fn start_app(config: Config) -> App {
    let mut app = App::start(config).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), app.identity.wait_ready()).await.unwrap();
    app
}

pub fn backend_yaml(socket: &std::path::Path, upstream: SocketAddr, callers: &[&str]) -> String {
    let callers: Vec<String> = callers.iter().map(|c| format!("'{c}'")).collect();
    format!(
        "identity: {{socket: 'unix://{}'}}
telemetry: {{listen: '127.0.0.1:0', log_format: text}}
runtime: {{drain_timeout: 5s}}
inbound:
  listen: '127.0.0.1:0'
  upstream: 'http://{upstream}'
  header_timeout: 1s
  upstream_connect_timeout: 1s
  upstream_response_timeout: 10s
  allowed_callers: [{}]
policy: {{file: policy.yaml}}
mgmt:
  listen: '127.0.0.1:0'
  state_file: state.json
  keys:
    - {{name: ops, role: admin, sha256: '{}'}}
    - {{name: portal, role: viewer, sha256: '{}'}}
",
        socket.display(),
        callers.join(", "),
        hex(proxy::config::sha256(ADMIN_KEY.as_bytes())),
        hex(proxy::config::sha256(VIEWER_KEY.as_bytes())),
    )
}

pub const ADMIN_KEY: &str = "admin-key-for-tests";
pub const VIEWER_KEY: &str = "viewer-key-for-tests";

fn hex(bytes: [u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The backend's `jwt` section, pointing at the dev IdP.
pub fn jwt_yaml(authority: &str) -> String {
    format!(
        "jwt: {{tenant_id: '{TENANT}', audiences: ['{AUDIENCE}', '11111111-2222-3333-4444-555555555555'], authority: '{authority}'}}\n"
    )
}

pub fn caller_yaml(socket: &std::path::Path, inbound: SocketAddr, closed_port: u16) -> String {
    format!(
        "identity: {{socket: 'unix://{}'}}
telemetry: {{listen: '127.0.0.1:0', log_format: text}}
outbound:
  listen: '127.0.0.1:0'
  connect_timeout: 1s
  response_timeout: 10s
  routes:
    - {{name: budget-backend, upstream: 'https://{inbound}', server_id: '{BACKEND}'}}
    - {{name: impostor-check, upstream: 'https://{inbound}', server_id: 'spiffe://aim.microsoft.com/someone-else'}}
    - {{name: down, upstream: 'https://127.0.0.1:{closed_port}', server_id: '{BACKEND}'}}
    - {{name: by-prefix, match: {{path_prefix: /bb}}, upstream: 'https://{inbound}', server_id: 'spiffe://aim.microsoft.com/ests/bp/b1/aid/*'}}
",
        socket.display()
    )
}

impl Mesh {
    /// Another backend sidecar (the backend's SVID, both callers allowed, the
    /// open policy) in front of `upstream`, with `inbound_extra` added to its
    /// `inbound` section (YAML lines indented by two spaces).
    pub async fn sidecar_for(&self, name: &str, upstream: SocketAddr, inbound_extra: &str) -> App {
        self.sidecar_with(name, upstream, inbound_extra, "").await
    }

    /// As [`Self::sidecar_for`], with `top_extra` (whole top-level sections) added.
    pub async fn sidecar_with(&self, name: &str, upstream: SocketAddr, inbound_extra: &str, top_extra: &str) -> App {
        let yaml = self
            .sidecar_yaml(name, upstream)
            .replace("  header_timeout: 1s\n", &format!("  header_timeout: 1s\n{inbound_extra}"))
            + top_extra;
        self.start_sidecar(name, &yaml).await
    }

    /// The YAML of [`Self::sidecar_for`], to edit.
    pub fn sidecar_yaml(&self, name: &str, upstream: SocketAddr) -> String {
        backend_yaml(&self.dir.path().join("backend.sock"), upstream, &[REPORT, APPROVAL])
            .replace("state_file: state.json", &format!("state_file: {name}-state.json"))
            + &jwt_yaml(&self.idp.authority())
    }

    /// Starts a sidecar from `yaml` (written to `<name>.yaml` in the mesh's directory).
    pub async fn start_sidecar(&self, name: &str, yaml: &str) -> App {
        let path = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        start_app(Config::load(&path).unwrap()).await
    }
}
