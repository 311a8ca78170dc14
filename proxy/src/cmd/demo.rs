//! `a2a-sidecar demo`: a whole mesh in one process, on loopback only.
//!
//! Two dev CAs (`aim.microsoft.com` and the federated `gcp.aim.microsoft.com`)
//! behind real Workload API sockets with short SVIDs (they rotate during the
//! demo), the dev IdP standing in for Entra ID and Microsoft Graph, the sample
//! `budget-backend` app behind its inbound sidecar enforcing the reference
//! policy, and five callers, each with its own outbound sidecar that obtains
//! its Entra token by federation (a JWT-SVID as the client assertion). Every
//! sidecar is built from YAML, as in a deployment. [`matrix`] runs the
//! enforcement matrix; `--keep-running` then leaves the stack up.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use certs::TrustDomain;
use certs::dev::{DevCa, WorkloadApiServer, WorkloadApiServerConfig};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::app::App;
use crate::cmd::dev_idp::{AppRegistration, DevIdp};
use crate::config::{Config, MapEnv};

pub mod matrix;
pub mod pdp;
pub mod sample_app;

pub use matrix::{Event, Outcome, Table, run_matrix};

const TRUST_DOMAIN: &str = "aim.microsoft.com";
const FEDERATED_DOMAIN: &str = "gcp.aim.microsoft.com";
const BACKEND: &str = "spiffe://aim.microsoft.com/ests/bp/b1/aid/budget-backend";
const TENANT: &str = "aaaaaaaa-0000-4000-8000-00000000d3e0";
const AUDIENCE: &str = "api://budget-backend";
/// The reference prototype's policy, unchanged; its placeholders are filled
/// by the same environment enrichment the prototype's deployment relied on.
const POLICY: &str = include_str!("../../../examples/reference-policy/spiffe-rbac-policy.yaml");
/// Short enough that SVIDs rotate (at half-life) while the demo runs.
const SVID_TTL: Duration = Duration::from_secs(4);
/// budget-report's client at the Keycloak-shaped issuer (`azp`), and that
/// issuer's audience for budget-backend.
const KEYCLOAK_AGENT: &str = "budget-report";
const KEYCLOAK_AUDIENCE: &str = "budget-backend";
/// The operator console's SPIFFE ID (`--keep-running` starts one).
const CONSOLE: &str = "spiffe://aim.microsoft.com/ops/console";

/// A calling agent: its SPIFFE ID, and its Entra agent identity if it has one.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub name: &'static str,
    /// `A2A_<short>` in the `--keep-running` environment.
    pub short: &'static str,
    pub id: &'static str,
    /// `SPIFFE_PREFIX` for entries under `policies`, `SPIFFE_ID` under `federated_policies`.
    pub id_var: &'static str,
    /// The service principal object ID (`oid`); `None` = no Entra identity.
    pub oid: Option<&'static str>,
    /// App roles granted to its Entra identity.
    pub roles: &'static [&'static str],
}

pub const REPORT: Caller = Caller {
    name: "budget-report",
    short: "REPORT",
    id_var: "SPIFFE_PREFIX",
    id: "spiffe://aim.microsoft.com/ests/bp/b1/aid/budget-report",
    oid: Some("00000000-0000-4000-8000-0000000000a1"),
    roles: &["Budget.Read"],
};
pub const APPROVAL: Caller = Caller {
    name: "budget-approval",
    short: "APPROVAL",
    id_var: "SPIFFE_PREFIX",
    id: "spiffe://aim.microsoft.com/ests/bp/b1/aid/budget-approval",
    oid: Some("00000000-0000-4000-8000-0000000000a2"),
    roles: &["Budget.Read", "Budget.Submit"],
};
pub const MENUS: Caller = Caller {
    name: "employee-menus",
    short: "MENUS",
    id_var: "SPIFFE_PREFIX",
    id: "spiffe://aim.microsoft.com/ests/bp/b1/aid/employee-menus",
    oid: Some("00000000-0000-4000-8000-0000000000a3"),
    roles: &[],
};
/// From the federated trust domain.
pub const GOOGLE: Caller = Caller {
    name: "google-budget-reader",
    short: "GOOGLE",
    id_var: "SPIFFE_ID",
    id: "spiffe://gcp.aim.microsoft.com/ests/bp/g1/aid/google-budget-reader",
    oid: Some("00000000-0000-4000-8000-0000000000b1"),
    roles: &["Budget.Read"],
};
/// A CI runner with an SVID but no Entra identity (so no token).
pub const GITHUB: Caller = Caller {
    name: "github-budget-reader",
    short: "GITHUB",
    id_var: "SPIFFE_ID",
    id: "spiffe://aim.microsoft.com/ests/bp/gh/aid/github-budget-reader",
    oid: None,
    roles: &[],
};
pub const CALLERS: [Caller; 5] = [REPORT, APPROVAL, MENUS, GOOGLE, GITHUB];
/// The backend's allow-list at start (employee-menus is not on it).
const ALLOWED: [Caller; 4] = [REPORT, APPROVAL, GOOGLE, GITHUB];

/// The enrichment the reference deployment did through its environment.
fn policy_env() -> MapEnv {
    let mut env = MapEnv::default().with("SPIFFE_PREFIX_ADMIN_CONTROL_PLANE", "spiffe://aim.microsoft.com/ests/bp/cp");
    for caller in CALLERS {
        let key = caller.name.to_ascii_uppercase().replace('-', "_");
        env = env.with(&format!("{}_{key}", caller.id_var), caller.id);
        if let Some(oid) = caller.oid {
            env = env.with(&format!("ENTRA_ID_{key}"), oid);
        }
    }
    // budget-report is also a client of the Keycloak-shaped issuer, under this agent ID.
    env = env.with("AGENT_ID_BUDGET_REPORT", KEYCLOAK_AGENT);
    // The GitHub runner's policy entry names an agent identity the runner never obtained a token for.
    env.with("ENTRA_ID_GITHUB_BUDGET_READER", "00000000-0000-4000-8000-0000000000c1")
}

/// A token the app presented itself in a row, and the certificate (DER) its
/// sidecar presented then, where that mattered.
struct AppToken {
    case: &'static str,
    token: String,
    cert: Option<Vec<u8>>,
}

/// The running demo mesh.
pub struct Stack {
    dir: tempfile::TempDir,
    _agents: Vec<WorkloadApiServer>,
    _app: tokio::task::JoinHandle<()>,
    _idp_task: tokio::task::JoinHandle<()>,
    pub idp: Arc<DevIdp>,
    /// A second token issuer, Keycloak-shaped (`jwt.issuers[]`).
    pub keycloak: Arc<crate::cmd::dev_idp::issuer::DevIssuer>,
    _keycloak_task: tokio::task::JoinHandle<()>,
    /// The external AuthZEN PDP budget-backend asks (`authzen.pdp`).
    pub pdp: Arc<pdp::DemoPdp>,
    _pdp_task: tokio::task::JoinHandle<()>,
    /// What the app sent in rows where it presented its own token (for `explain`).
    app_tokens: std::sync::Mutex<Vec<AppToken>>,
    /// The home trust domain's dev CA (the console's SVID comes from it).
    home: Arc<DevCa>,
    pub backend: App,
    policy_file: PathBuf,
    pub callers: Vec<(Caller, App)>,
    /// The backend's `/mgmt` admin key (random per run).
    pub admin_key: String,
}

impl Stack {
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("a2a-demo").tempdir()?;
        let (idp, _, idp_task) = crate::cmd::dev_idp::start(&dir.path().join("idp")).await?;
        let shape = crate::cmd::dev_idp::issuer::Shape::Keycloak;
        let (keycloak, _, keycloak_task) =
            crate::cmd::dev_idp::issuer::start(shape, jsonwebtoken::Algorithm::ES256).await?;
        let (pdp, pdp_addr, pdp_task) = pdp::start().await?;
        let home = Arc::new(DevCa::generate(&TrustDomain::new(TRUST_DOMAIN)?)?);
        let federated = Arc::new(DevCa::generate(&TrustDomain::new(FEDERATED_DOMAIN)?)?);
        // Federated credentials: the IdP accepts JWT-SVIDs from both trust domains as client assertions.
        for ca in [&home, &federated] {
            idp.trust_assertion_keys(serde_json::to_string(&ca.jwt_bundle()?)?.as_bytes())
                .map_err(anyhow::Error::msg)?;
        }
        idp.register_app("budget-backend-client", AppRegistration { oid: "budget-backend-oid".into(), roles: vec![] });
        for caller in CALLERS {
            if let Some(oid) = caller.oid {
                let roles = caller.roles.iter().map(|r| (*r).to_owned()).collect();
                idp.register_app(&client_id(caller), AppRegistration { oid: oid.into(), roles });
                // Graph: every caller is tagged for the finance resource.
                idp.set_graph_attribute(oid, "AgentIdentity", "Department", "finance");
            }
        }

        let mut agents = Vec::new();
        let workloads = CALLERS.iter().map(|c| (c.name, c.id)).chain([("budget-backend", BACKEND)]);
        for (name, id) in workloads {
            let (ca, other) = if id.contains(FEDERATED_DOMAIN) { (&federated, &home) } else { (&home, &federated) };
            let config = WorkloadApiServerConfig {
                ca: ca.clone(),
                id: id.parse()?,
                ttl: SVID_TTL,
                federated: vec![other.clone()],
            };
            agents.push(WorkloadApiServer::start(&dir.path().join(format!("{name}.sock")), config).await?);
        }
        let (app_addr, app) = sample_app::start().await?;

        let admin_key = random_key()?;
        let policy_file = dir.path().join("spiffe-rbac-policy.yaml");
        std::fs::write(&policy_file, POLICY)?;
        let backend_config = dir.path().join("budget-backend.yaml");
        let peers = Peers { idp: &idp.authority(), keycloak: &keycloak.issuer(), pdp: pdp_addr };
        std::fs::write(&backend_config, backend_yaml(dir.path(), app_addr, &peers, &admin_key))?;
        let backend = start_sidecar(Config::load_with_env(&backend_config, &policy_env())?).await?;
        let inbound = backend.inbound_addr.context("backend has no inbound listener")?;
        let mut callers = Vec::new();
        for caller in CALLERS {
            let path = dir.path().join(format!("{}.yaml", caller.name));
            std::fs::write(&path, caller_yaml(dir.path(), caller, inbound, &idp.authority()))?;
            callers.push((caller, start_sidecar(Config::load_with_env(&path, &MapEnv::default())?).await?));
        }
        Ok(Self {
            dir,
            _agents: agents,
            _app: app,
            _idp_task: idp_task,
            idp,
            keycloak,
            _keycloak_task: keycloak_task,
            pdp,
            _pdp_task: pdp_task,
            app_tokens: std::sync::Mutex::default(),
            home,
            backend,
            policy_file,
            callers,
            admin_key,
        })
    }

    /// The backend sidecar's configuration, as it loaded it.
    pub fn backend_config(&self) -> anyhow::Result<Config> {
        Ok(Config::load_with_env(&self.dir().join("budget-backend.yaml"), &policy_env())?)
    }

    /// Where the configs, policy and sockets live.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn outbound(&self, caller: Caller) -> anyhow::Result<SocketAddr> {
        self.callers
            .iter()
            .find(|(c, _)| c.name == caller.name)
            .and_then(|(_, app)| app.outbound_addr)
            .context("no such caller")
    }

    pub fn mgmt(&self) -> anyhow::Result<SocketAddr> {
        self.backend.mgmt_addr.context("backend has no mgmt listener")
    }

    /// A `/mgmt` call with the admin key; fails unless it answers 200.
    async fn mgmt_call(&self, method: &str, path: &str, body: serde_json::Value) -> anyhow::Result<()> {
        let headers = [("x-spiffe-admin-key", self.admin_key.as_str()), ("content-type", "application/json")];
        let (status, reply) = send(self.mgmt()?, method, "localhost", path, &headers, body.to_string()).await?;
        anyhow::ensure!(status == 200, "{method} {path}: {status} {reply}");
        Ok(())
    }

    /// The ready-to-paste environment for `--keep-running` (also written to a file).
    pub fn environment(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut env = vec![
            ("A2A_DEMO_DIR".to_owned(), self.dir().display().to_string()),
            ("A2A_ADMIN_KEY".to_owned(), self.admin_key.clone()),
            ("A2A_MGMT".to_owned(), self.mgmt()?.to_string()),
            ("A2A_BACKEND".to_owned(), self.backend.inbound_addr.context("no inbound")?.to_string()),
            ("A2A_BACKEND_TELEMETRY".to_owned(), self.backend.telemetry_addr.to_string()),
            ("A2A_IDP".to_owned(), self.idp.authority()),
            ("A2A_AUTHZEN".to_owned(), self.backend.authzen_addr.context("no authzen listener")?.to_string()),
        ];
        for (caller, app) in &self.callers {
            env.push((format!("A2A_{}", caller.short), app.outbound_addr.context("no outbound")?.to_string()));
        }
        Ok(env)
    }
}

/// `a2a-sidecar demo [--keep-running] [--env-file F]`: true when every case matched.
pub fn run(keep_running: bool, env_file: Option<PathBuf>) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        println!(
            "a2a-sidecar demo: starting two dev CAs behind Workload API sockets, the dev Entra/Graph emulator,\n\
             budget-backend with its inbound sidecar and five callers with outbound sidecars, on loopback..."
        );
        let stack = Stack::start().await?;
        let mut table = Table::start();
        let outcomes = run_matrix(&stack, |event| table.show(event)).await?;
        let all_matched = table.summary(&outcomes);
        if keep_running {
            keep_up(&stack, env_file).await?;
        }
        Ok(all_matched)
    })
}

/// The operator console in front of the backend's `/mgmt`, signing in at the dev IdP.
async fn start_console(stack: &Stack) -> anyhow::Result<(crate::console::Running, WorkloadApiServer)> {
    let socket = stack.dir().join("console.sock");
    let config =
        WorkloadApiServerConfig { ca: stack.home.clone(), id: CONSOLE.parse()?, ttl: SVID_TTL, federated: vec![] };
    let agent = WorkloadApiServer::start(&socket, config).await?;
    let yaml = format!(
        "# The operator console: the dev IdP's users alice (admin) and bob (viewer).
listen: '127.0.0.1:0'
identity: {{socket: 'unix://{socket}'}}
oidc: {{issuer: '{idp}/{TENANT}/v2.0', client_id: a2a-console, admin: [Console.Admin], viewer: [Console.Viewer]}}
fleet: {{poll_interval: 2s}}
sidecars:
  - {{name: budget-backend, mgmt: 'https://{mgmt}', spiffe_id: '{BACKEND}'}}
",
        socket = socket.display(),
        idp = stack.idp.authority(),
        mgmt = stack.mgmt()?,
    );
    let path = stack.dir().join("console.yaml");
    std::fs::write(&path, yaml)?;
    let mut console = crate::console::start(crate::config::ConsoleConfig::load(&path)?).await?;
    tokio::time::timeout(Duration::from_secs(20), console.identity.wait_ready())
        .await
        .context("the console got no SVID within 20 s")?
        .context("the console's SVID source ended")?;
    Ok((console, agent))
}

/// Prints how to reach the running stack, then waits for Ctrl-C or SIGTERM.
async fn keep_up(stack: &Stack, env_file: Option<PathBuf>) -> anyhow::Result<()> {
    let (console, _console_agent) = start_console(stack).await?;
    let mut env = stack.environment()?;
    env.push(("A2A_CONSOLE".to_owned(), console.addr.to_string()));
    let exports: String = env.iter().map(|(k, v)| format!("export {k}={v}\n")).collect();
    let path = env_file.unwrap_or_else(|| stack.dir().join("demo.env"));
    println!(
        "\nThe stack stays up; Ctrl-C stops it. Its configs are in {dir}.\n\
         Environment (also in {env_path}; `source` it in another shell):\n\n{exports}\n\
         Try:\n\
         curl -s -H 'Host: budget-backend' http://$A2A_REPORT/budget/read          # budget-report: 200\n\
         curl -s -H 'Host: budget-backend' -X POST http://$A2A_REPORT/budget/submit  # 403 rbac rule_denied\n\
         curl -s -H 'Host: budget-backend' http://$A2A_MENUS/budget/read         # employee-menus: 502, not allowed\n\
         curl -s -H \"X-Spiffe-Admin-Key: $A2A_ADMIN_KEY\" http://$A2A_MGMT/mgmt/health\n\
         curl -s -H \"X-Spiffe-Admin-Key: $A2A_ADMIN_KEY\" -X PUT http://$A2A_MGMT/mgmt/agent-risk \\\n  \
           -d '{{\"spiffe_id\":\"{report}\",\"risk_level\":\"high\"}}'\n\
         curl -sN -H \"X-Spiffe-Admin-Key: $A2A_ADMIN_KEY\" http://$A2A_MGMT/mgmt/audit/stream   # live decisions\n\
         curl -s http://$A2A_BACKEND_TELEMETRY/metrics\n\
         \n\
         The operator console: http://{console} (sign in at the dev IdP as alice, an admin, or bob, a viewer).\n\
         More in docs/demo.md and docs/console.md.",
        dir = stack.dir().display(),
        env_path = path.display(),
        report = REPORT.id,
        console = console.addr,
    );
    // Written after the instructions are printed, whole and then renamed: a
    // script polling for the file never sees half of it, nor misses the text.
    let partial = path.with_extension("partial");
    std::fs::write(&partial, &exports).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, &path).with_context(|| format!("writing {}", path.display()))?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

async fn start_sidecar(config: Config) -> anyhow::Result<App> {
    let mut app = App::start(config).await?;
    tokio::time::timeout(Duration::from_secs(20), app.identity.wait_ready()).await.context("no SVID within 20 s")?;
    Ok(app)
}

/// One plain HTTP/1.1 request.
async fn send(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: String,
) -> anyhow::Result<(u16, String)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let mut request = hyper::Request::builder().method(method).uri(path).header(hyper::header::HOST, host);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = sender.send_request(request.body(Full::new(bytes::Bytes::from(body)))?).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn client_id(caller: Caller) -> String {
    format!("{}-client", caller.name)
}

fn random_key() -> anyhow::Result<String> {
    let mut bytes = [0u8; 24];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| anyhow::anyhow!("no randomness for the admin key"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Where budget-backend's sidecar finds the services it depends on.
struct Peers<'a> {
    idp: &'a str,
    keycloak: &'a str,
    pdp: SocketAddr,
}

fn backend_yaml(dir: &Path, app: SocketAddr, peers: &Peers<'_>, admin_key: &str) -> String {
    let allowed: Vec<String> = ALLOWED.iter().map(|c| format!("'{}'", c.id)).collect();
    let key_hash: String = crate::config::sha256(admin_key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "# budget-backend's sidecar: all five layers.
identity: {{socket: 'unix://{dir}/budget-backend.sock'}}
telemetry: {{listen: '127.0.0.1:0', log_format: text}}
inbound:
  listen: '127.0.0.1:0'
  upstream: 'http://{app}'
  allowed_callers: [{allowed}]
policy: {{file: spiffe-rbac-policy.yaml}}
jwt:
  tenant_id: '{TENANT}'
  audiences: ['{AUDIENCE}']
  authority: '{idp}'
  # A second issuer: tokens are routed to it by their `iss` (docs/issuers.md).
  issuers:
    - {{name: keycloak, issuer: '{keycloak}', audiences: ['{KEYCLOAK_AUDIENCE}'], algorithms: [ES256], roles_claim: realm_access.roles}}
# After Layers 1-4, an external AuthZEN PDP decides too; the sidecar also answers as one (docs/authzen.md).
authzen:
  pdp: {{url: 'http://{pdp}/access/v1/evaluation', cache_ttl: 1s}}
  listen: '127.0.0.1:0'
entra: {{client_id: budget-backend-client, tenant_id: '{TENANT}', authority: '{idp}', graph_endpoint: '{idp}', use_jwt_svid: true}}
risk: {{source: graph, refresh: 1s}}
tags: {{source: graph, ttl: 1s}}
mgmt:
  listen: '127.0.0.1:0'
  state_file: state.json
  keys: [{{name: demo-operator, role: admin, sha256: '{key_hash}'}}]
  # The operator console comes in over mTLS with its SVID; curl with the key, plain, on loopback.
  tls: {{allowed_callers: ['{CONSOLE}'], roles: {{'{CONSOLE}': admin}}, consoles: ['{CONSOLE}'], loopback_plain: true}}
",
        dir = dir.display(),
        allowed = allowed.join(", "),
        idp = peers.idp,
        keycloak = peers.keycloak,
        pdp = peers.pdp,
    )
}

fn caller_yaml(dir: &Path, caller: Caller, inbound: SocketAddr, idp: &str) -> String {
    let (token, entra) = match caller.oid {
        Some(_) => (
            format!(", entra_token: {{scope: '{AUDIENCE}/.default'}}"),
            format!(
                "entra: {{client_id: '{}', tenant_id: '{TENANT}', authority: '{idp}', use_jwt_svid: true}}\n",
                client_id(caller)
            ),
        ),
        None => (String::new(), String::new()),
    };
    format!(
        "# {name}'s sidecar: plain HTTP from the app in, mTLS (and an Entra token) out.
identity: {{socket: 'unix://{dir}/{name}.sock'}}
telemetry: {{listen: '127.0.0.1:0', log_format: text}}
outbound:
  listen: '127.0.0.1:0'
  routes:
    - {{name: budget-backend, upstream: 'https://{inbound}', server_id: '{BACKEND}'{token}}}
{entra}",
        name = caller.name,
        dir = dir.display(),
    )
}
