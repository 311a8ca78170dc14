//! `a2a-sidecar demo`: a whole mesh in one process, on loopback only.
//!
//! A dev CA behind real Workload API sockets (short SVIDs, so they rotate
//! during the demo), the sample `budget-backend` app behind its inbound
//! sidecar, and callers with their own outbound sidecars. Every sidecar is
//! built from YAML, as in a deployment. The demo runs a matrix of calls,
//! prints a table and succeeds only if every case matched.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use certs::TrustDomain;
use certs::dev::{DevCa, WorkloadApiServer, WorkloadApiServerConfig};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use crate::app::App;
use crate::config::{Config, MapEnv};

pub mod sample_app;

const TRUST_DOMAIN: &str = "aim.example";
const BACKEND: &str = "spiffe://aim.example/budget-backend";
const REPORT: &str = "spiffe://aim.example/budget-report";
const MENUS: &str = "spiffe://aim.example/employee-menus";
/// The backend's policy, in the reference prototype's format.
const POLICY: &str = "version: '5.0'
trust_domain: aim.example
default_action: deny
policies:
  - name: budget-report
    spiffe_id: spiffe://aim.example/budget-report
    rules:
      - {path: /budget/read, methods: [GET, POST], action: allow}
      - {path: /budget/submit, methods: [POST], action: deny}
  - name: employee-menus
    spiffe_id: spiffe://aim.example/employee-menus
    rules:
      - {path: '/*', methods: ['*'], action: deny}
";
/// Short enough that SVIDs rotate (at half-life) while the demo runs.
const SVID_TTL: Duration = Duration::from_secs(4);

/// One row of the result table.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub case: &'static str,
    pub caller: &'static str,
    pub request: String,
    pub expected: String,
    pub got: String,
    pub layer: String,
    pub reason: String,
    pub latency: Duration,
}

impl Outcome {
    pub fn matched(&self) -> bool {
        self.expected == self.got
    }
}

/// The running demo mesh.
pub struct Stack {
    _dir: tempfile::TempDir,
    _agents: Vec<WorkloadApiServer>,
    _app: tokio::task::JoinHandle<()>,
    pub backend: App,
    backend_config: PathBuf,
    app_addr: SocketAddr,
    pub callers: Vec<(&'static str, App)>,
}

impl Stack {
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("a2a-demo").tempdir()?;
        let ca = Arc::new(DevCa::generate(&TrustDomain::new(TRUST_DOMAIN)?)?);
        let mut agents = Vec::new();
        for id in [BACKEND, REPORT, MENUS] {
            let config = WorkloadApiServerConfig { ca: ca.clone(), id: id.parse()?, ttl: SVID_TTL, federated: vec![] };
            agents.push(WorkloadApiServer::start(&socket(dir.path(), id), config).await?);
        }
        let (app_addr, app) = sample_app::start().await?;

        std::fs::write(dir.path().join("policy.yaml"), POLICY)?;
        let backend_config = dir.path().join("budget-backend.yaml");
        std::fs::write(&backend_config, backend_yaml(dir.path(), app_addr, &[REPORT]))?;
        let backend = start_sidecar(Config::load(&backend_config)?).await?;
        let inbound = backend.inbound_addr.context("backend has no inbound listener")?;
        let mut callers = Vec::new();
        for (name, id) in [("budget-report", REPORT), ("employee-menus", MENUS)] {
            let yaml = caller_yaml(dir.path(), id, inbound);
            callers.push((
                name,
                start_sidecar(Config::parse(&dir.path().join(format!("{name}.yaml")), &yaml, &MapEnv::default())?)
                    .await?,
            ));
        }
        Ok(Self { _dir: dir, _agents: agents, _app: app, backend, backend_config, app_addr, callers })
    }

    fn outbound(&self, caller: &str) -> anyhow::Result<SocketAddr> {
        self.callers
            .iter()
            .find(|(name, _)| *name == caller)
            .and_then(|(_, app)| app.outbound_addr)
            .context("no such caller")
    }

    /// Rewrites the backend's allow-list and reloads it, as SIGHUP does.
    fn allow(&self, callers: &[&str]) -> anyhow::Result<()> {
        std::fs::write(&self.backend_config, backend_yaml(self._dir.path(), self.app_addr, callers))?;
        self.backend.reload()
    }

    /// One call through `caller`'s outbound sidecar.
    async fn call(
        &self,
        case: &'static str,
        caller: &'static str,
        (method, path): (&str, &str),
        expected: &str,
    ) -> anyhow::Result<Outcome> {
        let started = Instant::now();
        let (status, body) = send(self.outbound(caller)?, method, "budget-backend", path).await?;
        let latency = started.elapsed();
        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let field = |k: &str, default: &str| json.get(k).and_then(|v| v.as_str()).unwrap_or(default).to_owned();
        let (layer, reason) =
            if status == 200 { ("none".into(), "allowed".into()) } else { (field("layer", "?"), field("reason", "?")) };
        Ok(Outcome {
            case,
            caller,
            request: format!("{method} {path}"),
            expected: expected.into(),
            got: status.to_string(),
            layer,
            reason,
            latency,
        })
    }
}

/// Runs the matrix; each outcome is reported to `progress` as it completes.
pub async fn run_matrix(stack: &Stack, mut progress: impl FnMut(&Outcome)) -> anyhow::Result<Vec<Outcome>> {
    let mut outcomes = Vec::new();
    let mut record = |o: Outcome| {
        progress(&o);
        outcomes.push(o);
    };
    record(stack.call("allowed caller reads", "budget-report", ("GET", "/budget/read"), "200").await?);
    record(stack.call("caller not in the allow-list", "employee-menus", ("GET", "/budget/read"), "502").await?);
    record(stack.call("RBAC deny rule", "budget-report", ("POST", "/budget/submit"), "403").await?);
    record(stack.call("RBAC: no rule matches", "budget-report", ("GET", "/budget/admin"), "403").await?);
    record(stack.call("encoded slash refused", "budget-report", ("GET", "/budget%2Fread"), "400").await?);
    record(stack.call("dot-segments resolved first", "budget-report", ("GET", "/admin/../budget/read"), "200").await?);

    stack.allow(&[REPORT, MENUS])?;
    record(stack.call("allow-list change: past mTLS", "employee-menus", ("GET", "/budget/read"), "403").await?);
    stack.allow(&[REPORT])?;
    record(stack.call("removed again", "employee-menus", ("GET", "/budget/read"), "502").await?);

    // Traffic across SVID rotations: every SVID lives 4 s and is replaced at 2 s.
    let started = Instant::now();
    let serial = |app: &App| app.identity.current().map(|i| i.svid().serial().to_owned());
    let first_serial = serial(&stack.backend);
    let (mut ok, mut total) = (0u32, 0u32);
    while started.elapsed() < SVID_TTL + Duration::from_millis(500) {
        total += 1;
        if send(stack.outbound("budget-report")?, "GET", "budget-backend", "/budget/read")
            .await
            .is_ok_and(|(s, _)| s == 200)
        {
            ok += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rotated = serial(&stack.backend) != first_serial;
    record(Outcome {
        case: "SVID rotation under traffic",
        caller: "budget-report",
        request: format!("{total} x GET /budget/read"),
        expected: "all 200, rotated".into(),
        got: if ok == total && rotated {
            "all 200, rotated".into()
        } else {
            format!("{ok}/{total} ok, rotated: {rotated}")
        },
        layer: "none".into(),
        reason: "allowed".into(),
        latency: started.elapsed(),
    });
    Ok(outcomes)
}

/// Prints the table header, then each row as it completes, then a summary.
pub struct Table;

impl Table {
    pub fn header() {
        println!(
            "{:<32} {:<15} {:<28} {:<17} {:<17} {:<9} {:<28} {:>9}",
            "case", "caller", "request", "expected", "got", "layer", "reason", "latency"
        );
        println!("{}", "-".repeat(162));
    }

    pub fn row(o: &Outcome) {
        let mark = if o.matched() { " " } else { "✗" };
        println!(
            "{:<32} {:<15} {:<28} {:<17} {:<17} {:<9} {:<28} {:>7.1}ms {mark}",
            o.case,
            o.caller,
            o.request,
            o.expected,
            o.got,
            o.layer,
            o.reason,
            o.latency.as_secs_f64() * 1000.0
        );
    }
}

/// `a2a-sidecar demo`: true when every case matched.
pub fn run() -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        println!(
            "a2a-sidecar demo: starting a dev CA, Workload API sockets, budget-backend and two callers on loopback..."
        );
        let stack = Stack::start().await?;
        Table::header();
        let outcomes = run_matrix(&stack, Table::row).await?;
        let failed = outcomes.iter().filter(|o| !o.matched()).count();
        println!("{}", "-".repeat(162));
        println!("{} cases, {} matched, {failed} failed", outcomes.len(), outcomes.len() - failed);
        Ok(failed == 0)
    })
}

async fn start_sidecar(config: Config) -> anyhow::Result<App> {
    let mut app = App::start(config).await?;
    tokio::time::timeout(Duration::from_secs(20), app.identity.wait_ready()).await.context("no SVID within 20 s")?;
    Ok(app)
}

/// One plain HTTP/1.1 request.
async fn send(addr: SocketAddr, method: &str, host: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, host)
        .body(Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn socket(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{}.sock", id.rsplit('/').next().unwrap_or("agent")))
}

fn backend_yaml(dir: &Path, app: SocketAddr, callers: &[&str]) -> String {
    let callers: Vec<String> = callers.iter().map(|c| format!("'{c}'")).collect();
    format!(
        "identity: {{socket: 'unix://{}'}}
telemetry: {{listen: '127.0.0.1:0', log_format: text}}
inbound:
  listen: '127.0.0.1:0'
  upstream: 'http://{app}'
  allowed_callers: [{}]
policy: {{file: policy.yaml}}
",
        socket(dir, BACKEND).display(),
        callers.join(", ")
    )
}

fn caller_yaml(dir: &Path, id: &str, inbound: SocketAddr) -> String {
    format!(
        "identity: {{socket: 'unix://{}'}}
telemetry: {{listen: '127.0.0.1:0', log_format: text}}
outbound:
  listen: '127.0.0.1:0'
  routes:
    - {{name: budget-backend, upstream: 'https://{inbound}', server_id: '{BACKEND}'}}
",
        socket(dir, id).display()
    )
}
